import Testing
import TestSupport

/// In CI the mount tests must run: if this machine cannot mount, fail
/// loudly instead of letting every mount test skip.
@Suite struct MountRequirementTests {
    @Test func mountTestsCanRunWhereRequired() {
        if MountEnvironment.required {
            #expect(MountEnvironment.available, "mount tests are required here (CI or STRATA_REQUIRE_MOUNT=1) but root or /dev/fuse is missing")
        }
    }
}
