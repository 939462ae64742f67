import Store

extension Store {
    /// Records that `ref`'s repository holds `digest`, for later pushes'
    /// cross-repository mounts. The pull or push it follows has succeeded
    /// whatever happens here, so a failure is said on `progress`, not thrown.
    func noteBlobSource(_ digest: String, _ ref: Reference, progress: (String) -> Void) {
        do { try recordBlobSource(digest, registry: ref.host, repository: ref.repository) } catch {
            progress("warning: \(error.message); a later push of blob \(Digest.hex(digest).prefix(12)) will upload it rather than mount it")
        }
    }
}
