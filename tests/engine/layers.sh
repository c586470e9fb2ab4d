#!/bin/sh
# layers.sh SRC_ROOT LIBDITMOE_A LIBDITMOE_SO: the engine's layering holds.
# 1. Programs see only dit_* names: every global symbol the static archive
#    and the shared library define starts with dit_ (internal names such as
#    zip_close are local, so they cannot clash with a user's).
# 2. No engine file includes another layer's header by a relative path
#    (the include paths of engine/*/meson.build are the rule; this catches
#    a "../model/model.h" that would get around them), and each layer only
#    names headers of its own folder, a lower layer or include/ditmoe.
set -u
src=$1 a=$2 so=$3
fail=0
for lib in "$a" "$so"; do
  flag=-g; [ "$lib" = "$so" ] && flag=-D
  bad=$(nm $flag --defined-only "$lib" | awk 'NF == 3 {print $3}' | grep -v '^dit_' | sort -u)
  n=$(nm $flag --defined-only "$lib" | awk 'NF == 3 && $3 ~ /^dit_/' | wc -l)
  if [ -n "$bad" ] || [ "$n" -lt 20 ]; then
    echo "FAIL $lib exports non-dit_ symbols or too few dit_ ones ($n):"; echo "$bad" | head
    fail=1
  else
    echo "ok   $lib: $n exported symbols, all dit_*"
  fi
done
order="formats kernels vae model sampling"
below=""
for layer in $order; do
  below="$below $layer"
  for f in "$src"/engine/$layer/*.c "$src"/engine/$layer/*.h; do
    for h in $(sed -n 's/^#include "\(.*\)"/\1/p' "$f"); do
      found=""
      for l in $below; do [ -f "$src/engine/$l/$h" ] && found=$l; done
      case $h in ../*|*/*) found="";; esac
      if [ -z "$found" ]; then
        echo "FAIL $f includes \"$h\": not a header of $layer or a layer below it"
        fail=1
      fi
    done
  done
  echo "ok   engine/$layer includes only its own and lower layers' headers"
done
[ $fail = 0 ] && echo "layers: ok"
exit $fail
