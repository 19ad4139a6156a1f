# Run at build time (cmake -P) by the spillway_build_info target: writes OUT, a header
# with the source tree's commit, only when it changed, so that an unchanged commit
# recompiles nothing. Inputs: SOURCE_DIR, OUT.
set(_commit "unknown")
find_program(_git git)
if(_git AND EXISTS "${SOURCE_DIR}/.git")
  execute_process(COMMAND "${_git}" -C "${SOURCE_DIR}" describe --always --dirty --abbrev=12
    OUTPUT_VARIABLE _described RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET)
  if(_rc EQUAL 0 AND _described)
    set(_commit "${_described}")
  endif()
endif()
set(_text "// Generated at build time by cmake/write-build-info.cmake.\n#pragma once\n#define SPILLWAY_SOURCE_COMMIT \"${_commit}\"\n")
include(${CMAKE_CURRENT_LIST_DIR}/write-if-changed.cmake)
spillway_write_if_changed("${OUT}" "${_text}")
