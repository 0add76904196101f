#!/usr/bin/env bash
# Seeds corpus/decode/ from the protocol test vectors (../vectors/*.hex).
#
# A .hex file is whitespace-separated hex byte tokens with `#` comments (see ../vectors/README.md).
# The decode target reads its first input byte as a config byte (limits, chunk size, an extra
# row_bytes), so every seed is written twice: with config 0x00 (max_frame 64 KiB, max_batch 64)
# and with config 0xd5 (max_frame 1 KiB, max_batch 3, chunk 3, extra row_bytes 13).
# One more seed holds every well-formed vector back to back, to exercise multi-frame streams.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vectors="$here/../vectors"
out="$here/corpus/decode"
mkdir -p "$out"

# The bytes of one .hex file, as plain hex digits.
hexof() { sed -e 's/#.*//' "$1" | tr -d ' \t\r\n'; }

count=0
all=""
for f in "$vectors"/*.hex; do
    name=$(basename "$f" .hex)
    hex=$(hexof "$f")
    if (( ${#hex} % 2 != 0 )) || [[ ! $hex =~ ^[0-9a-fA-F]*$ ]]; then
        echo "seed.sh: $f is not whole hex bytes" >&2
        exit 1
    fi
    printf '00%s' "$hex" | xxd -r -p > "$out/vec_${name}"
    printf 'd5%s' "$hex" | xxd -r -p > "$out/vec_${name}_d5"
    count=$((count + 2))
    case "$name" in req_*|resp_*|ok_*) all+="$hex" ;; esac
done
printf '00%s' "$all" | xxd -r -p > "$out/stream_all_ok"
count=$((count + 1))
echo "seed.sh: wrote $count seeds to $out"
