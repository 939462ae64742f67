// swift-tools-version: 6.0
import PackageDescription

// Module graph (one way, see docs/ARCHITECTURE.md):
//   CStrata (system-call shims) <- Sys only; CFuseProto (the FUSE ABI) <- FUSE
//   Sys <- Tables <- FUSE <- Loopback <- strata
//                  Tables <- Overlay <- OverlayFS (also <- FUSE) <- strata
//                  Sys <- Archive (libarchive, zlib) <- Store (SQLite via GRDB) <- Registry (AsyncHTTPClient) <- strata
// Every target names each module it imports (swift-system's SystemPackage
// included); libarchive is reached only through Archive.
let package = Package(
    name: "Strata",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "strata", targets: ["strata"]),
        .executable(name: "strata-overlay", targets: ["strata-overlay"]),
        .library(name: "FUSE", targets: ["FUSE"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
    ],
    targets: [
        // liburing (Debian liburing-dev) drives the FUSE io_uring queues,
        // from CStrata's uring.c.
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        // The FUSE kernel ABI's structures, for FUSE; the system-call shims
        // (CStrata) are reached only through Sys.
        .target(name: "CFuseProto"),
        .target(name: "CStrata", dependencies: ["CURing", "CFuseProto"]),
        .target(name: "Sys", dependencies: [
            "CStrata",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The node and open-file tables both file systems keep.
        .target(name: "Tables", dependencies: [
            "Sys",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "FUSE", dependencies: [
            "CFuseProto", "Sys", "Tables",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "Loopback", dependencies: ["FUSE", "Sys", "Tables", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "Overlay", dependencies: ["Sys", "Tables", .product(name: "SystemPackage", package: "swift-system")]),
        // libarchive (Debian libarchive-dev) reads and writes tar and its
        // compressions; Archive adds the layer rules on top.
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        // zlib (Debian zlib1g-dev) writes and reads eStargz's gzip members,
        // which must start exactly where a file's data does.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "Archive", dependencies: [
            "Sys", "CArchive", "CZlib",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "Store", dependencies: [
            "Archive", "Sys",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        .target(name: "OverlayFS", dependencies: ["Overlay", "FUSE", "Sys", "Tables", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "Registry", dependencies: [
            "Store", "Archive", "Sys",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ]),
        // containerd's snapshot service (gRPC) over the store's snapshot API;
        // Generated/ is made by scripts/generate-protos.sh from Protos/.
        .target(name: "SnapshotService", dependencies: [
            "Store", "Registry", "Sys",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "GRPCCore", package: "grpc-swift-2"),
            .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
            .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .target(name: "Pool", dependencies: [
            "FUSE", "Sys", "Tables",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .target(name: "LayerStore", dependencies: [
            "FUSE", "Overlay", "OverlayFS", "Store", "Registry", "Sys",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "strata", dependencies: [
            "FUSE", "Loopback", "Overlay", "OverlayFS", "Store", "Registry", "Sys", "SnapshotService", "LayerStore", "Pool",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The mount program alone (no store, registry or Foundation): it
        // starts at every layer containers/storage mounts. The Swift runtime
        // is linked in statically, saving the loading of its libraries.
        .executableTarget(name: "strata-overlay", dependencies: [
            "OverlayFS", "Overlay", "FUSE", "Sys", "Tables",
        ], linkerSettings: [.unsafeFlags(["-static-stdlib"])]),
        .executableTarget(name: "strata-bench", dependencies: [
            "Sys", "CStrata", "Archive", "Store", "Registry", "TestSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "bench/Sources/strata-bench"),
        .target(name: "TestSupport", dependencies: ["Sys", "CStrata"], path: "Tests/Support"),
        .testTarget(name: "FUSETests", dependencies: ["FUSE", "Sys", "CStrata", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "RegistryTests", dependencies: [
            "Registry", "Store", "Sys", "TestSupport", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .testTarget(name: "StoreTests", dependencies: ["Store", "Sys", "TestSupport"]),
        .testTarget(name: "ArchiveTests", dependencies: ["Archive", "Sys", "CStrata", "TestSupport"]),
        .testTarget(name: "OverlayTests", dependencies: ["Overlay", "OverlayFS", "FUSE", "Sys", "Tables", "CStrata", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "LoopbackTests", dependencies: ["Sys", "CStrata", "TestSupport"]),
        .testTarget(name: "PoolTests", dependencies: ["Pool", "Sys", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "TablesTests", dependencies: ["Tables", .product(name: "SystemPackage", package: "swift-system")]),
    ],
    swiftLanguageModes: [.v6]
)
