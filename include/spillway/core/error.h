// Error types of spillway. The library reports bad input (files, arguments, specs) by
// throwing one of these; it never exits or aborts. Messages name what was wrong and
// where: the file, the key or tensor, the byte offset, expected vs found.
#pragma once

#include <stdexcept>
#include <string>

namespace spillway {

// Base of every error the library throws on purpose.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A file could not be opened, mapped or read.
class IoError : public Error {
 public:
  using Error::Error;
};

// A file's content does not follow its format (GGUF structure, R data, ...).
class FormatError : public Error {
 public:
  using Error::Error;
};

// Well-formed input that this build does not support (architecture, quant type, ...).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// A bad argument from the caller: policy spec, option value, empty text, a prompt that
// does not fit the cache. The CLI maps this one to exit status 2.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

}  // namespace spillway
