import Foundation
import Sys

/// `inspect` output shaped like docker's, GraphDriver included, so that
/// tools reading `.GraphDriver.Data.MergedDir` find what they expect.
extension Store {
    func graphDriver(layerDirs: [String], upper: String?) -> JSONValue {
        // Docker's btrfs driver gives no data: a subvolume is the whole tree.
        if layout == .btrfs { return .object(["Name": .string(layout.graphDriverName), "Data": .null]) }
        var data: [String: String] = [:]
        if let upper {
            data["UpperDir"] = "\(upper)/diff"
            data["WorkDir"] = "\(upper)/work"
            data["MergedDir"] = "\(upper)/merged"
            data["LowerDir"] = layerDirs.joined(separator: ":")
        } else if let top = layerDirs.first {
            // An image: its top layer plays the upper, as docker inspect shows.
            let base = (top as NSString).deletingLastPathComponent
            data["UpperDir"] = top
            data["WorkDir"] = "\(base)/work"
            data["MergedDir"] = "\(base)/merged"
            if layerDirs.count > 1 { data["LowerDir"] = layerDirs.dropFirst().joined(separator: ":") }
        }
        return .object(["Name": .string("overlay2"), "Data": .object(data.mapValues { .string($0) })])
    }

    /// The image's config, decoded.
    public func config(of img: ImageRecord) throws(StoreError) -> OCI.ImageConfig {
        try OCI.decode(OCI.ImageConfig.self, img.config, "image \(img.id): config")
    }

    public func inspect(image img: ImageRecord) throws(StoreError) -> JSONValue {
        let cfg = try config(of: img)
        // The run config as docker prints it: every field kept.
        let run = cfg.config.flatMap { try? JSONDecoder().decode(JSONValue.self, from: OCI.encode($0)) } ?? .object([:])
        let dirs = img.layerIDs.reversed().map { storedLayer($0).tree }
        let tags = (try images()).first { $0.0.id == img.id }?.1 ?? []
        var out: [String: JSONValue] = [
            "Id": .string(img.id),
            "RepoTags": .array(tags.map { .string($0) }),
            "Config": run,
            "Architecture": .string(cfg.architecture ?? ""),
            "Os": .string(cfg.os ?? ""),
            "Created": .string(cfg.created ?? ""),
            "RootFS": .object(["Type": .string("layers"), "Layers": .array(cfg.diffIDs.map { .string($0) })]),
            "GraphDriver": graphDriver(layerDirs: dirs, upper: nil),
        ]
        // Strata's own: how much of each lazily pulled layer is here.
        let lazy = lazyLayers(of: img)
        if !lazy.isEmpty {
            out["Lazy"] = .array(try lazy.map { (id) throws(StoreError) -> JSONValue in
                let p = try storedLayer(id).lazyProgress()
                let s = try storedLayer(id).lazySource()
                return .object(["DiffID": .string(s.diffID), "Blob": .string(s.blob), "Format": .string(s.format),
                                "LocalBytes": .integer(p.local), "TotalBytes": .integer(p.total),
                                "LocalFiles": .integer(Int64(p.localFiles)), "TotalFiles": .integer(Int64(p.files))])
            })
        }
        return .object(out)
    }

    public func inspect(container c: ContainerRecord) throws(StoreError) -> JSONValue {
        let lowers = layout == .btrfs ? [] : try lowerDirs(c).map { (try? Sys.realPath($0)) ?? $0 }
        return .object([
            "Id": .string(c.id),
            "Name": .string(c.name),
            "Image": .string(c.image),
            "Created": .string(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: c.created))),
            "GraphDriver": graphDriver(layerDirs: lowers, upper: containerLayer(c).directory),
        ])
    }
}
