// An external program built against the installed SDK: compiles one attention
// kernel through a running flashcored, fetches it back by key and fills the
// launch parameters for a shape (no GPU needed for any of it).
//
//   sdk_consumer ADDRESS    exit 0 and "sdk_consumer: ok ..." on success
#include <cstdio>
#include <string>

#include "flashcore/client.hpp"

namespace v1 = flashcore::v1;

static int fail(const char* step, const flashcore::Error& error) {
  std::fprintf(stderr, "sdk_consumer: %s: %s\n%s\n", step, error.message.c_str(),
               error.detail.c_str());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: sdk_consumer ADDRESS\n");
    return 2;
  }
  auto client = flashcore::client::Client::connect({.address = argv[1]});
  if (!client) return fail("connect", client.error());

  v1::KernelRequest request;
  request.set_template_id("attention_fwd");
  v1::Problem* problem = request.mutable_problem();
  problem->set_dtype(v1::DTYPE_FP16);
  problem->set_head_dim(64);
  problem->set_batch(2);
  problem->set_heads(8);
  problem->set_seq_q(333);
  problem->set_layout(v1::LAYOUT_BHSD);
  v1::TileConfig* config = request.mutable_config();
  config->set_block_m(64);
  config->set_block_n(64);
  config->set_warps(4);
  config->set_stages(2);

  auto compiled = client->compile(request);
  if (!compiled) return fail("compile", compiled.error());
  auto fetched = client->get_kernel(compiled->key(), false, problem);
  if (!fetched) return fail("get_kernel", fetched.error());
  if (fetched->cubin() != compiled->cubin() || fetched->cubin().empty()) {
    std::fprintf(stderr, "sdk_consumer: the fetched cubin differs from the compiled one\n");
    return 1;
  }
  flashcore::AttentionParams params =
      flashcore::client::make_attention_params(*problem, 0x1000, 0x2000, 0x3000, 0x4000);
  if (params.batch != 2 || params.heads != 8 || params.seq_q != 333) {
    std::fprintf(stderr, "sdk_consumer: make_attention_params filled the wrong shape\n");
    return 1;
  }
  std::printf("sdk_consumer: ok key=%s kernel=%s tier=%s cubin_bytes=%zu\n",
              fetched->key().c_str(), fetched->lowered_name().c_str(),
              v1::CacheTier_Name(fetched->tier()).c_str(), fetched->cubin().size());
  return 0;
}
