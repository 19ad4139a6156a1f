#!/usr/bin/env bash
# Builds two long non-fiction texts from files every Debian system carries, for
# the results in docs/results.md (data/ is not committed; rerun this to remake them):
#   data/other-licenses.txt  the distinct licenses of /usr/share/common-licenses
#                            (legal English), in a fixed order;
#   data/other-python.txt    Python 3.11 standard library modules
#                            (/usr/lib/python3.11/*.py, sorted by name, C locale).
# Each file is capped at a fixed byte count so the run stays the same size.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
export LC_ALL=C

kLicenseDir=/usr/share/common-licenses
kLicenses=(Apache-2.0 GPL-3 MPL-2.0 Artistic CC0-1.0 GFDL-1.3 LGPL-2.1 BSD)
kPythonDir=/usr/lib/python3.11
kMaxBytes=400000

# Each text is assembled in a private temporary file and moved into place, so a
# reader (or a second run) never sees a half-written file.
tmp=$(mktemp -d data/.other-texts.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

out=data/other-licenses.txt
for name in "${kLicenses[@]}"; do
  f="$kLicenseDir/$name"
  [[ -f $f ]] || { echo "make-other-texts.sh: missing $f" >&2; exit 1; }
  cat "$f" >>"$tmp/all"
  printf '\n\n' >>"$tmp/all"
done
head -c "$kMaxBytes" "$tmp/all" >"$tmp/out"
mv -f "$tmp/out" "$out"
rm -f "$tmp/all"

out=data/other-python.txt
[[ -d $kPythonDir ]] || { echo "make-other-texts.sh: missing $kPythonDir" >&2; exit 1; }
for f in "$kPythonDir"/*.py; do  # the glob sorts by the C locale
  printf '# ---- %s ----\n' "$(basename "$f")" >>"$tmp/all"
  cat "$f" >>"$tmp/all"
  printf '\n' >>"$tmp/all"
  [[ $(stat -c %s "$tmp/all") -ge $kMaxBytes ]] && break
done
head -c "$kMaxBytes" "$tmp/all" >"$tmp/out"
mv -f "$tmp/out" "$out"

for f in data/other-licenses.txt data/other-python.txt; do
  printf '%s: %s bytes, sha256 %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
done
