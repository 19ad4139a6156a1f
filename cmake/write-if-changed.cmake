# Included by the build-time scripts (cmake -P) that generate sources: writes TEXT to PATH
# only when it differs from what is there, so that an unchanged input rebuilds nothing.
function(spillway_write_if_changed path text)
  set(_old "")
  if(EXISTS "${path}")
    file(READ "${path}" _old)
  endif()
  if(NOT _old STREQUAL text)
    file(WRITE "${path}" "${text}")
  endif()
endfunction()
