// Writing a whole file so that a crash or a kill at any moment leaves either the file as
// it was or the new file, never part of one: the bytes go to a temporary file in the same
// folder (".NAME.<pid>-<n>-<random>.tmp"), are flushed to the disk (fsync), and the temporary is
// renamed over NAME (rename(2) replaces atomically within a file system). A process killed
// between the two leaves a stray temporary next to NAME, not a damaged NAME.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace spillway {

// Replaces `path` with `data` as above. Throws IoError naming the path (and removes the
// temporary) when the folder cannot be written, the disk is full, or the rename fails.
// The new file has mode 0644 less the umask, as a plain open(2) would give it. Safe to
// call from several threads (each gets its own temporary).
void write_file_atomic(const std::string& path, std::string_view data);
// The same with the file's bytes in parts, one after another (no copy of them joined).
void write_file_atomic(const std::string& path, std::span<const std::string_view> parts);

// The whole content of a file. Throws IoError naming the path and the system's reason when
// it cannot be opened or read (a folder, a missing file, no permission).
std::string read_file(const std::string& path);

}  // namespace spillway
