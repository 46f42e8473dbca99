"""Compiler and linker flags shared by every mtlsd target."""

# Warnings are errors; hardening: stack protector, FORTIFY_SOURCE (needs the
# optimisation .bazelrc turns on), PIE (Debian's gcc emits position-independent
# code by default; -pie links it so) and full RELRO.
MT_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-fstack-protector-strong",
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=2",
    "-D_GNU_SOURCE",
]

MT_LINKOPTS = [
    "-pie",
    "-Wl,-z,relro,-z,now",
]
