# Embeds kernel_templates/ into the binary as a generated C++ source, so the
# daemon needs no files beside it. Templates are compiled at run time by NVRTC,
# never by this build.
set(FLASHCORE_TEMPLATE_DIR ${CMAKE_SOURCE_DIR}/kernel_templates)
file(GLOB_RECURSE FLASHCORE_TEMPLATE_FILES CONFIGURE_DEPENDS
  ${FLASHCORE_TEMPLATE_DIR}/*.cuh ${FLASHCORE_TEMPLATE_DIR}/*.cu ${FLASHCORE_TEMPLATE_DIR}/*.h)
set(FLASHCORE_EMBEDDED_TEMPLATES ${CMAKE_BINARY_DIR}/generated/embedded_templates.cpp)
add_custom_command(
  OUTPUT ${FLASHCORE_EMBEDDED_TEMPLATES}
  COMMAND ${CMAKE_COMMAND}
    -DTEMPLATE_DIR=${FLASHCORE_TEMPLATE_DIR}
    -DOUTPUT=${FLASHCORE_EMBEDDED_TEMPLATES}
    -P ${CMAKE_SOURCE_DIR}/cmake/generate_embedded_templates.cmake
  DEPENDS ${FLASHCORE_TEMPLATE_FILES} ${CMAKE_SOURCE_DIR}/cmake/generate_embedded_templates.cmake
  COMMENT "embedding kernel_templates/")
# A custom command's output gets a build rule only in the folder that declares
# it; this target carries the rule to server/'s flashcore_jit.
add_custom_target(flashcore_embedded_templates DEPENDS ${FLASHCORE_EMBEDDED_TEMPLATES})
