# Warnings for our own code only (third-party headers come in as SYSTEM includes).
# -Wno-restrict: GCC 12 reports false positives inside std::string concatenation
# (GCC bug 105329) at -O3; clang (the fuzz build) has no such warning and would refuse the flag.
function(anchorserve_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-unused-parameter>
    $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-Wno-restrict>)
endfunction()

# Torch for a target, PRIVATE so its include path (with its own protobuf headers) never
# propagates to server/ or client/ (BUILD.md rule 1).
function(anchorserve_use_torch target)
  target_link_libraries(${target} PRIVATE ${TORCH_LIBRARIES})
  target_include_directories(${target} SYSTEM PRIVATE ${TORCH_INCLUDE_DIRS})
  target_compile_definitions(${target} PRIVATE ANCHORSERVE_HAS_TORCH=1)
  if(ANCHORSERVE_CUDA)
    target_compile_definitions(${target} PRIVATE ANCHORSERVE_CUDA=1)
  endif()
endfunction()
