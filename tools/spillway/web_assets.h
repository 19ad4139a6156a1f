// The files of `spillway serve`'s web page (tools/spillway/web/), compiled into the binary
// by cmake/embed-files.cmake: no network and no files next to the binary at run time.
#pragma once

#include <string_view>
#include <vector>

namespace spillway::cli {

struct WebAsset {
  std::string_view path;          // URL path ("/", "/app.js")
  std::string_view content_type;  // "text/html; charset=utf-8"
  std::string_view body;
};

const std::vector<WebAsset>& web_assets();

}  // namespace spillway::cli
