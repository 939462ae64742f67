import FUSE
import OverlayFS
import Sys
#if canImport(Glibc)
import Glibc
#endif

/// The union mount alone, for containers/storage's `mount_program`: it
/// takes fuse-overlayfs's command line and links nothing of the store, the
/// registry or Foundation, so that it starts in a few milliseconds
/// (containers/storage runs it for every layer it mounts, several times per
/// build step). `strata mount` serves the same union from the full program.
///
/// The command line is read by hand, not with swift-argument-parser as the
/// `strata` commands are: its reflection over the command's properties cost
/// about 1 ms at every start (30% of this program's start-up under perf),
/// and this command line is fuse-overlayfs's, fixed: `-o OPTS` (repeatable,
/// or glued as `-oOPTS`), `-f`, `-d`, `[SOURCE] MOUNTPOINT`.
@main
enum StrataOverlay {
    static let usage = """
        USAGE: strata-overlay [-f] [-d] -o lowerdir=LOWER1:LOWER2[,upperdir=UPPER,workdir=WORK][,OPTION...] [SOURCE] MOUNTPOINT

        Mount a union of directories like the kernel's overlayfs: Strata's mount
        program for podman and buildah (storage.conf:
        mount_program = "/usr/local/bin/strata-overlay"). Returns once the
        mount serves; unmount with 'umount MOUNTPOINT'.

        OPTIONS:
          -o OPTIONS      Mount options, comma-separated; those of 'strata mount --help'.
          -f              Stay in the foreground.
          -d              Stay in the foreground and log every request.
          --version       Show the version.
          -h, --help      Show this help.
          SOURCE          A label mount.fuse3 passes before the mount point; ignored.
        """

    static func main() {
        var options: [String] = []
        var paths: [String] = []
        var foreground = false, debug = false
        var args = CommandLine.arguments.dropFirst()
        func bad(_ message: String) -> Never {
            printError("strata-overlay: \(message) (see 'strata-overlay --help')")
            exit(2)
        }
        while let a = args.popFirst() {
            switch a {
            case "--version", "-V":
                print("strata-overlay version 0.1.0 (Strata)")
                exit(0)
            case "-h", "--help":
                print(usage)
                exit(0)
            case "-f": foreground = true
            case "-d", "--debug": debug = true
            case "-o":
                guard let v = args.popFirst() else { bad("-o needs a list of options") }
                options.append(v)
            case "--":
                paths += args
                args = []
            default:
                if a.hasPrefix("-o") {
                    options.append(String(a.dropFirst(2)))
                } else if a.hasPrefix("-") && a != "-" {
                    bad("unknown flag '\(a)'")
                } else {
                    paths.append(a)
                }
            }
        }
        guard paths.count == 1 || paths.count == 2, let mountpoint = paths.last else {
            bad("give one mount point (and at most a source label before it)")
        }
        guard !options.isEmpty else { bad("-o lowerdir=... is required") }
        var union: UnionMount
        do throws(UsageError) {
            union = try UnionMount(options: options, mountpoint: mountpoint)
        } catch {
            bad("\(error)")
        }
        if debug {
            union.session.debug = true
            // Only with -d: containers/storage starts this program for every
            // mount, and its standard error is podman's.
            if let hint = UringSupport.offHint(union.session.uring) { printError("strata-overlay: \(hint)") }
        }
        do throws(SysError) {
            try union.serve(foreground: foreground || debug)
        } catch {
            printError("strata-overlay: \(error)")
            exit(1)
        }
    }
}
