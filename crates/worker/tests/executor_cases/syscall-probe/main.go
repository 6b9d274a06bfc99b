// syscall-probe makes the system calls the RUN sandbox's seccomp profile
// decides on and prints, for each, "NAME=ERRNO" (0 when the call worked).
// The executor tests run it in a step, natively and under QEMU, and build it
// statically for each platform with the Go toolchain.
package main

import (
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

func errno(e syscall.Errno) int { return int(e) }

func main() {
	for _, name := range os.Args[1:] {
		var e syscall.Errno
		switch name {
		case "keyctl":
			// KEYCTL_GET_KEYRING_ID of the session keyring, creating none.
			sessionKeyring := -3
			_, _, e = syscall.RawSyscall(syscall.SYS_KEYCTL, 0, uintptr(sessionKeyring), 0)
		case "add_key":
			kind := []byte("user\x00")
			desc := []byte("kbuild-probe\x00")
			payload := []byte("x")
			processKeyring := -2
			_, _, e = syscall.RawSyscall6(sys_add_key, uintptr(unsafe.Pointer(&kind[0])),
				uintptr(unsafe.Pointer(&desc[0])), uintptr(unsafe.Pointer(&payload[0])),
				uintptr(len(payload)), uintptr(processKeyring), 0)
		case "personality-norandom":
			// ADDR_NO_RANDOMIZE: not one of the values the profile allows.
			_, _, e = syscall.RawSyscall(syscall.SYS_PERSONALITY, 0x0040000, 0, 0)
		case "personality-query":
			_, _, e = syscall.RawSyscall(syscall.SYS_PERSONALITY, 0xffffffff, 0, 0)
		case "getpid":
			_, _, e = syscall.RawSyscall(syscall.SYS_GETPID, 0, 0, 0)
		default:
			fmt.Fprintf(os.Stderr, "unknown probe %q\n", name)
			os.Exit(2)
		}
		fmt.Printf("%s=%d\n", name, errno(e))
	}
}
