import Foundation
import Sys

/// `inspect` output shaped like docker's, GraphDriver included, so that
/// tools reading `.GraphDriver.Data.MergedDir` find what they expect.
extension Store {
    func graphDriver(layerDirs: [String], upper: String?) -> [String: Any] {
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
        return ["Name": "overlay2", "Data": data]
    }

    /// The image's config, decoded.
    public func config(of img: ImageRecord) throws(StoreError) -> OCI.ImageConfig {
        try OCI.decode(OCI.ImageConfig.self, img.config, "image \(img.id): config")
    }

    public func inspect(image img: ImageRecord) throws(StoreError) -> [String: Any] {
        let cfg = try config(of: img)
        // The run config as docker prints it: its JSON, every field kept.
        let run = cfg.config.flatMap { try? JSONSerialization.jsonObject(with: OCI.encode($0)) } ?? [String: Any]()
        let dirs = img.layerIDs.reversed().map { "\(overlayDir)/\(Digest.hex($0))/diff" }
        let tags = (try images()).first { $0.0.id == img.id }?.1 ?? []
        return [
            "Id": img.id,
            "RepoTags": tags,
            "Config": run,
            "Architecture": cfg.architecture ?? "",
            "Os": cfg.os ?? "",
            "Created": cfg.created ?? "",
            "RootFS": ["Type": "layers", "Layers": cfg.diffIDs],
            "GraphDriver": graphDriver(layerDirs: dirs, upper: nil),
        ]
    }

    public func inspect(container c: ContainerRecord) throws(StoreError) -> [String: Any] {
        let lowers = try lowerDirs(c).map { (try? Sys.realPath($0)) ?? $0 }
        return [
            "Id": c.id,
            "Name": c.name,
            "Image": c.image,
            "Created": ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: c.created)),
            "GraphDriver": graphDriver(layerDirs: lowers, upper: "\(overlayDir)/\(c.id)"),
        ]
    }
}
