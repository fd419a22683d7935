# The protos compile once into flashcore_proto, which server and client link.
set(FLASHCORE_PROTO_DIR ${CMAKE_SOURCE_DIR}/proto)
set(FLASHCORE_PROTO_OUT ${CMAKE_BINARY_DIR}/generated)
file(MAKE_DIRECTORY ${FLASHCORE_PROTO_OUT})
file(GLOB_RECURSE FLASHCORE_PROTOS CONFIGURE_DEPENDS ${FLASHCORE_PROTO_DIR}/*.proto)

get_target_property(FLASHCORE_GRPC_PLUGIN gRPC::grpc_cpp_plugin LOCATION)
set(FLASHCORE_PROTO_SRCS)
foreach(proto ${FLASHCORE_PROTOS})
  file(RELATIVE_PATH rel ${FLASHCORE_PROTO_DIR} ${proto})
  string(REGEX REPLACE "\\.proto$" "" stem ${rel})
  set(outs
    ${FLASHCORE_PROTO_OUT}/${stem}.pb.cc ${FLASHCORE_PROTO_OUT}/${stem}.pb.h
    ${FLASHCORE_PROTO_OUT}/${stem}.grpc.pb.cc ${FLASHCORE_PROTO_OUT}/${stem}.grpc.pb.h)
  add_custom_command(
    OUTPUT ${outs}
    COMMAND protobuf::protoc
      --proto_path=${FLASHCORE_PROTO_DIR}
      --cpp_out=${FLASHCORE_PROTO_OUT}
      --grpc_out=${FLASHCORE_PROTO_OUT}
      --plugin=protoc-gen-grpc=${FLASHCORE_GRPC_PLUGIN}
      ${proto}
    DEPENDS ${proto}
    COMMENT "protoc ${rel}")
  list(APPEND FLASHCORE_PROTO_SRCS ${outs})
endforeach()

add_library(flashcore_proto STATIC ${FLASHCORE_PROTO_SRCS})
target_include_directories(flashcore_proto PUBLIC ${FLASHCORE_PROTO_OUT})
target_link_libraries(flashcore_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)
target_compile_options(flashcore_proto PRIVATE -w)
