# Writes OUT (a header defining FAB_GIT_COMMIT) from the git state of SRC: the
# short commit, "-dirty" when tracked files differ from it, "unknown" outside a
# git checkout; the environment's FAB_GIT_COMMIT, when set, wins. Run at every build (bench/CMakeLists.txt), so a benchmark report
# names the sources it was built from, not those of the last configure; the file
# is rewritten only when the text changes, so an unchanged tree relinks nothing.
set(commit unknown)
if(DEFINED ENV{FAB_GIT_COMMIT} AND NOT "$ENV{FAB_GIT_COMMIT}" STREQUAL "")
  set(commit "$ENV{FAB_GIT_COMMIT}") # a tree copied without .git (tools/gpu-check.sh)
elseif(GIT_EXECUTABLE)
  execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --short=12 HEAD
    WORKING_DIRECTORY ${SRC} OUTPUT_VARIABLE head OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE rc ERROR_QUIET)
  if(rc EQUAL 0 AND head)
    set(commit ${head})
    execute_process(COMMAND ${GIT_EXECUTABLE} diff --quiet HEAD --
      WORKING_DIRECTORY ${SRC} RESULT_VARIABLE dirty ERROR_QUIET)
    if(NOT dirty EQUAL 0)
      set(commit "${commit}-dirty")
    endif()
  endif()
endif()
string(REGEX REPLACE "[^A-Za-z0-9._+-]" "_" commit "${commit}") # a plain C string, whatever the environment held
set(text "#define FAB_GIT_COMMIT \"${commit}\"\n")
set(old "")
if(EXISTS ${OUT})
  file(READ ${OUT} old)
endif()
if(NOT old STREQUAL text)
  file(WRITE ${OUT} "${text}")
endif()
