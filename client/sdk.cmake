# The installable C++ SDK (`cmake --install`): headers, libflashcore.so (the
# client library with its generated messages and the Driver API loader inside),
# a CMake package (find_package(flashcore CONFIG) -> flashcore::client) and a
# pkg-config file (flashcore.pc). Both are relocatable: they find the prefix
# from their own location, so an install into any folder works as it is.
#
# The shared library keeps the internal static libraries (proto, cuda, common)
# out of the interface: a consumer needs only protobuf (the generated headers
# use it) and cuda.h (launcher.hpp declares CUdeviceptr/CUstream), never gRPC,
# spdlog or OpenSSL headers.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

add_library(flashcore_sdk SHARED)
target_link_libraries(flashcore_sdk PRIVATE flashcore_client_objects
                      PUBLIC $<INSTALL_INTERFACE:protobuf::libprotobuf>)
set(FLASHCORE_SDK_INCLUDE_SUBDIR ${CMAKE_INSTALL_INCLUDEDIR}/flashcore-sdk)
target_include_directories(flashcore_sdk INTERFACE
                           $<INSTALL_INTERFACE:${FLASHCORE_SDK_INCLUDE_SUBDIR}>)
set_target_properties(flashcore_sdk PROPERTIES
  OUTPUT_NAME flashcore
  EXPORT_NAME client
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}
  LINKER_LANGUAGE CXX)

if(NOT FLASHCORE_FUZZ)
  install(TARGETS flashcore_sdk EXPORT flashcoreTargets
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  # The include root keeps the spellings the headers use among themselves
  # ("flashcore/...", "common/..."), under a folder of its own so that
  # common/ does not land in <prefix>/include.
  install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/flashcore
          DESTINATION ${FLASHCORE_SDK_INCLUDE_SUBDIR})
  install(FILES ${CMAKE_SOURCE_DIR}/server/common/result.hpp
          DESTINATION ${FLASHCORE_SDK_INCLUDE_SUBDIR}/common)
  install(FILES ${CMAKE_SOURCE_DIR}/kernel_templates/common/attention_params.cuh
          DESTINATION ${FLASHCORE_SDK_INCLUDE_SUBDIR}/common)
  install(DIRECTORY ${FLASHCORE_PROTO_OUT}/flashcore/v1
          DESTINATION ${FLASHCORE_SDK_INCLUDE_SUBDIR}/flashcore
          FILES_MATCHING PATTERN "*.pb.h")
  install(DIRECTORY ${FLASHCORE_PROTO_DIR}/flashcore/v1
          DESTINATION ${CMAKE_INSTALL_DATADIR}/flashcore/proto/flashcore
          FILES_MATCHING PATTERN "*.proto")

  set(FLASHCORE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/flashcore)
  install(EXPORT flashcoreTargets NAMESPACE flashcore:: DESTINATION ${FLASHCORE_CMAKE_DIR})
  # cuda.h: where this build found it, else the consumer's CUDA toolkit.
  set(FLASHCORE_SDK_CUDA_INCLUDE_DIR ${CUDA_INCLUDE_DIR})
  configure_package_config_file(${CMAKE_CURRENT_SOURCE_DIR}/sdk/flashcoreConfig.cmake.in
    ${CMAKE_CURRENT_BINARY_DIR}/flashcoreConfig.cmake
    INSTALL_DESTINATION ${FLASHCORE_CMAKE_DIR})
  write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/flashcoreConfigVersion.cmake
    COMPATIBILITY SameMinorVersion)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/flashcoreConfig.cmake
          ${CMAKE_CURRENT_BINARY_DIR}/flashcoreConfigVersion.cmake
          DESTINATION ${FLASHCORE_CMAKE_DIR})

  # pkg-config: paths relative to the .pc file (${pcfiledir}).
  file(RELATIVE_PATH FLASHCORE_PC_TO_PREFIX
       /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
  string(REGEX REPLACE "/$" "" FLASHCORE_PC_TO_PREFIX "${FLASHCORE_PC_TO_PREFIX}")
  configure_file(${CMAKE_CURRENT_SOURCE_DIR}/sdk/flashcore.pc.in
                 ${CMAKE_CURRENT_BINARY_DIR}/flashcore.pc @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/flashcore.pc
          DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()
