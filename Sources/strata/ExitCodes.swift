import ArgumentParser
import Registry
import Store

/// Exit codes by kind of failure, so that scripts can tell a missing image
/// from a corrupt one or an unreachable registry without reading the line.
/// The table is in the README ("Exit codes"); `strata run` exits with the
/// command's own status once the command started.
enum Exit {
    /// A system call, file, database or mount that failed; anything else.
    static let failure: Int32 = 1
    /// No such image, container, layer or mount.
    static let notFound: Int32 = 3
    /// A name taken already, or something still in use.
    static let conflict: Int32 = 4
    /// Input that is not what it must be: an archive, a manifest, a
    /// reference, an option's value.
    static let invalidInput: Int32 = 5
    /// Content that does not match its digest; a damaged store.
    static let corrupt: Int32 = 6
    /// A registry that cannot be reached, or stopped answering.
    static let network: Int32 = 7
    /// A registry that wants a login or refused it.
    static let unauthorized: Int32 = 8
    /// Bad command line (argument-parser's EX_USAGE).
    static let usage: Int32 = 64
    /// A global option that is not one (podman's code for its own errors).
    static let globalOption: Int32 = 125

    static func code(_ kind: StoreError.Kind) -> Int32 {
        switch kind {
        case .notFound: return notFound
        case .conflict: return conflict
        case .invalidInput, .archive: return invalidInput
        case .corrupt: return corrupt
        case .database, .mount, .system, .io: return failure
        }
    }

    static func code(_ error: any Error) -> Int32 {
        switch error {
        case let e as StoreError: return code(e.kind)
        case let e as RegistryError:
            switch e.kind {
            case .invalidReference, .noMatchingPlatform, .certificate: return invalidInput
            case .network: return network
            case .unauthorized: return unauthorized
            case .http(let status, _): return status == 401 || status == 403 ? unauthorized : status == 404 ? notFound : failure
            case .corrupt, .protocol: return corrupt
            case .store(let k): return code(k)
            case .system: return failure
            }
        default: return failure
        }
    }
}

/// One line naming the problem, and the exit code of its kind.
func fail(_ error: any Error) -> ExitCode {
    fail("\(error)", code: Exit.code(error))
}
