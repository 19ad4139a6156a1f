# Run at build time (cmake -P): writes OUT, a C++ source defining
# spillway::cli::web_assets() with the bytes of each file of FILES (a ;-list, each
# "NAME=PATH") and its content type from the extension, so that `spillway serve` carries
# its page in the binary. Inputs: FILES ("|" between entries), OUT.
string(REPLACE "|" ";" FILES "${FILES}")
set(_entries "")
set(_arrays "")
set(_i 0)
foreach(_pair IN LISTS FILES)
  string(FIND "${_pair}" "=" _eq)
  string(SUBSTRING "${_pair}" 0 ${_eq} _name)
  math(EXPR _from "${_eq} + 1")
  string(SUBSTRING "${_pair}" ${_from} -1 _path)
  file(READ "${_path}" _hex HEX)
  string(LENGTH "${_hex}" _hex_len)
  math(EXPR _size "${_hex_len} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," _bytes "${_hex}")
  get_filename_component(_ext "${_path}" EXT)
  if(_ext STREQUAL ".html")
    set(_type "text/html; charset=utf-8")
  elseif(_ext STREQUAL ".js")
    set(_type "text/javascript; charset=utf-8")
  elseif(_ext STREQUAL ".css")
    set(_type "text/css; charset=utf-8")
  elseif(_ext STREQUAL ".svg")
    set(_type "image/svg+xml")
  else()
    message(FATAL_ERROR "embed-files: no content type for ${_path}")
  endif()
  string(APPEND _arrays "const unsigned char kAsset${_i}[] = {${_bytes}0x00};\n")
  string(APPEND _entries "      {\"${_name}\", \"${_type}\",\n       std::string_view(reinterpret_cast<const char*>(kAsset${_i}), ${_size})},\n")
  math(EXPR _i "${_i} + 1")
endforeach()
set(_text "// Generated at build time by cmake/embed-files.cmake from tools/spillway/web/.
#include \"web_assets.h\"

namespace spillway::cli {
namespace {
${_arrays}}  // namespace

const std::vector<WebAsset>& web_assets() {
  static const std::vector<WebAsset> assets = {
${_entries}  };
  return assets;
}

}  // namespace spillway::cli
")
include(${CMAKE_CURRENT_LIST_DIR}/write-if-changed.cmake)
spillway_write_if_changed("${OUT}" "${_text}")
