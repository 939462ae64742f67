import Store

/// One of containerd's list filters, the forms its snapshot callers send:
/// `FIELD==VALUE`, `FIELD!=VALUE` and `FIELD` (present) on `name`,
/// `parent`, `kind` and `labels."KEY"` (or `labels.KEY`), joined by `,`
/// (all must hold). Any other form is refused by name, never ignored.
struct SnapshotFilter: Sendable {
    enum Op: Sendable { case equal, notEqual, present }
    struct Term: Sendable {
        var field: [String]
        var op: Op
        var value: String
    }
    let terms: [Term]

    init(_ text: String) throws(SnapshotError) {
        var terms: [Term] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            let p = String(part).trimmingCharacters(in: " ")
            let op: Op
            let lhs: String, rhs: String
            if let r = p.range(of: "!=") {
                op = .notEqual; lhs = String(p[..<r.lowerBound]); rhs = String(p[r.upperBound...])
            } else if let r = p.range(of: "==") {
                op = .equal; lhs = String(p[..<r.lowerBound]); rhs = String(p[r.upperBound...])
            } else if p.contains("~=") || p.contains("=") {
                throw SnapshotError(.invalidArgument, "filter '\(text)': only ==, != and presence are supported")
            } else {
                op = .present; lhs = p; rhs = ""
            }
            let field = try Self.field(lhs.trimmingCharacters(in: " "), text)
            terms.append(Term(field: field, op: op, value: Self.unquote(rhs.trimmingCharacters(in: " "))))
        }
        if terms.isEmpty { throw SnapshotError(.invalidArgument, "filter '\(text)' is empty") }
        self.terms = terms
    }

    static func field(_ s: String, _ text: String) throws(SnapshotError) -> [String] {
        if ["name", "parent", "kind"].contains(s) { return [s] }
        if s.hasPrefix("labels.") {
            let key = unquote(String(s.dropFirst(7)))
            if !key.isEmpty { return ["labels", key] }
        }
        throw SnapshotError(.invalidArgument, "filter '\(text)': unknown field '\(s)' (name, parent, kind, labels.\"KEY\")")
    }

    static func unquote(_ s: String) -> String {
        if s.count >= 2, let f = s.first, f == s.last, f == "\"" || f == "'" || f == "/" { return String(s.dropFirst().dropLast()) }
        return s
    }

    func matches(_ i: SnapshotInfo) -> Bool {
        terms.allSatisfy { t in
            let v: String?
            switch t.field[0] {
            case "name": v = i.name
            // containerd writes a snapshot without a parent as parent=="".
            case "parent": v = i.parent ?? ""
            case "kind": v = i.kind.rawValue
            default: v = t.field.count > 1 ? i.labels[t.field[1]] : nil
            }
            switch t.op {
            case .present: return v != nil
            case .equal: return v == t.value
            case .notEqual: return v != t.value
            }
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in c: Character) -> String {
        var s = Substring(self)
        while s.first == c { s = s.dropFirst() }
        while s.last == c { s = s.dropLast() }
        return String(s)
    }
}
