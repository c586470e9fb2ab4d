#!/bin/sh
# prelink.sh OUT CC... -- OBJCOPY AR -- LIB.a...
# Links the layer archives into one relocatable object, makes every hidden
# symbol local (only DIT_API functions stay global), and archives it as OUT.
set -eu
out=$1; shift
cc=""
while [ "$1" != "--" ]; do cc="$cc $1"; shift; done; shift
objcopy=$1 ar=$2; shift 3
obj="$out.o"
# shellcheck disable=SC2086
$cc -r -nostdlib -o "$obj" -Wl,--whole-archive "$@" -Wl,--no-whole-archive
"$objcopy" --localize-hidden "$obj"
rm -f "$out"
"$ar" rcs "$out" "$obj"
rm -f "$obj"
