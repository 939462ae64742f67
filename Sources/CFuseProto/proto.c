/* The FUSE protocol's structures (fuse_proto.h) are header-only; SwiftPM
 * needs one source file to build the target. */
#include "fuse_proto.h"
