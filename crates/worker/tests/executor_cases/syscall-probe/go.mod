module kbuild/syscallprobe

go 1.19
