#!/usr/bin/env bash
# llama.cpp for benchmarks/gguf_llamacpp.py without compiling it: the llama-cpp-py-sync wheel (llama.cpp b11739, CPU)
# in a virtualenv of its own, and DIR/python, a wrapper to pass as --llamacpp-python.
# The wheel's libraries ask for glibc 2.38 only for C23's __isoc23_strto*/sscanf names; on an older glibc (Debian 12:
# 2.36) that version requirement is marked weak and a tiny preloaded shim forwards those names to strtol & co.
#   bash benchmarks/llamacpp_venv.sh /tmp/llamacpp-venv
set -euo pipefail
DIR=${1:-/tmp/llamacpp-venv}
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q llama-cpp-py-sync==0.11739
LIB=$("$DIR/bin/python" -c "import importlib.util as u; print(u.find_spec('llama_cpp_py_sync').submodule_search_locations[0])")
cat > "$DIR/isoc23.c" <<'EOF'
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
long __isoc23_strtol(const char *s, char **e, int b) { return strtol(s, e, b); }
unsigned long __isoc23_strtoul(const char *s, char **e, int b) { return strtoul(s, e, b); }
unsigned long long __isoc23_strtoull(const char *s, char **e, int b) { return strtoull(s, e, b); }
long long __isoc23_strtoll(const char *s, char **e, int b) { return strtoll(s, e, b); }
int __isoc23_sscanf(const char *s, const char *f, ...) { va_list a; va_start(a, f); int r = vsscanf(s, f, a); va_end(a); return r; }
EOF
gcc -shared -fPIC -O2 -o "$LIB/libisoc23.so" "$DIR/isoc23.c"
"$DIR/bin/python" - "$LIB"/lib*.so* <<'EOF'
import struct, sys  # set VER_FLG_WEAK on each ELF64 file's GLIBC_2.38 entry of .gnu.version_r
for path in sys.argv[1:]:
    b = bytearray(open(path, "rb").read())
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", b, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    for s in (s for s in secs if s[1] == 0x6ffffffe):  # SHT_GNU_verneed
        strtab, off = secs[s[6]][4], s[4]
        while True:
            _, count, _, aux, following = struct.unpack_from("<HHIII", b, off)
            a = off + aux
            for _ in range(count):
                _, flags, _, name, step = struct.unpack_from("<IHHII", b, a)
                if bytes(b[strtab + name: b.index(0, strtab + name)]) == b"GLIBC_2.38":
                    struct.pack_into("<H", b, a + 4, flags | 2)
                a += step
            if not following:
                break
            off += following
    open(path, "wb").write(b)
EOF
printf '#!/bin/sh\nLD_PRELOAD=%s/libisoc23.so exec %s/bin/python "$@"\n' "$LIB" "$DIR" > "$DIR/python"
chmod +x "$DIR/python"
"$DIR/python" -c "from llama_cpp_py_sync._cffi_bindings import get_lib; get_lib(); print('llama.cpp loads')"
