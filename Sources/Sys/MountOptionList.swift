/// The `-o` list as mount(8) and mount.fuse3 pass it: comma-separated, with
/// empty elements tolerated. Options we do not know are refused by name.
public struct MountOptionList: Sendable {
    public var items: [(key: String, value: String?)] = []


    public init(_ lists: [String]) {
        for list in lists {
            for part in splitOptions(list) where !part.isEmpty {
                if let eq = part.firstIndex(of: "=") {
                    items.append((String(part[..<eq]), String(part[part.index(after: eq)...])))
                } else {
                    items.append((part, nil))
                }
            }
        }
    }
}

/// Splits on commas not escaped with a backslash (lowerdir may hold `\,`).
public func splitOptions(_ s: String) -> [String] {
    var out: [String] = []
    var cur = ""
    var escaped = false
    for ch in s {
        if escaped { cur.append("\\"); cur.append(ch); escaped = false; continue }
        if ch == "\\" { escaped = true; continue }
        if ch == "," { out.append(cur); cur = ""; continue }
        cur.append(ch)
    }
    if escaped { cur.append("\\") }
    out.append(cur)
    return out
}
