/* Freestanding stand-in for cross-target checks (see README.md): macOS on x86_64. */
#ifndef ZS_CROSS_TARGET_CONDITIONALS_H
#define ZS_CROSS_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_SIMULATOR 0
#endif
