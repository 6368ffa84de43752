/*
 * A stand-in for Windows' bcryptprimitives.dll, for running Rust test binaries
 * under wine 8 (Debian bookworm), which lacks this DLL.
 *
 * Rust's standard library (1.78 and later) imports ProcessPrng from
 * bcryptprimitives.dll for HashMap keys and other randomness. Windows documents
 * it as: BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData), which always
 * returns TRUE. Here it is implemented on top of RtlGenRandom, exported by
 * advapi32.dll as SystemFunction036 (wine implements it from the host's
 * /dev/urandom). RtlGenRandom takes a ULONG length, so larger requests are
 * served in chunks.
 *
 * Built by `cargo xtask test-windows` with:
 *   x86_64-w64-mingw32-gcc -shared -O2 -s -o bcryptprimitives.dll \
 *       bcryptprimitives.c bcryptprimitives.def -ladvapi32
 */
#include <windows.h>

typedef BOOLEAN(WINAPI *rtl_gen_random_fn)(PVOID, ULONG);

/* Declared here rather than through <ntsecapi.h> to keep the build minimal. */
__declspec(dllimport) BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    const SIZE_T chunk = 0x10000000; /* 256 MiB, far below ULONG_MAX */
    while (len > 0) {
        ULONG n = (ULONG)(len < chunk ? len : chunk);
        if (!SystemFunction036(data, n)) {
            /* ProcessPrng cannot report failure; Windows terminates the
             * process instead of returning predictable bytes. Do the same. */
            ExitProcess(0xC0000001u);
        }
        data += n;
        len -= n;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
