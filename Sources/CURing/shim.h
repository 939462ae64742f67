/* liburing, from Debian's liburing-dev. Only C code includes it (CStrata's
 * uring.c): its copy of <linux/io_uring.h> differs from the system one that
 * swift-system imports, and Clang refuses two definitions in one program. */
#include <liburing.h>
