import Overlay
import Registry

/// What `strata layer-store` is told: where Strata's store is, how to reach
/// registries, and how each layer's union fetches files.
public struct LayerStoreOptions: Sendable {
    public var storeRoot: String
    public var registry: RegistryOptions
    /// Options for each layer's union (`lazy_fetch=on_read`, `lazy_readahead=N`).
    public var unionOptions: [String]
    /// Where a lazily pulled file's data comes from (the registry).
    public var lazyData: (any LazyData)?
    /// One line per layer looked up, pulled or refused.
    public var progress: @Sendable (String) -> Void

    public init(storeRoot: String, registry: RegistryOptions, unionOptions: [String], lazyData: (any LazyData)?,
                progress: @escaping @Sendable (String) -> Void) {
        self.storeRoot = storeRoot
        self.registry = registry
        self.unionOptions = unionOptions
        self.lazyData = lazyData
        self.progress = progress
    }
}
