#include "cli.hpp"

namespace flashcore::cli {

void add_problem_options(CLI::App& command, KernelFlags& f) {
  command.add_option("--template", f.template_id,
                     "kernel family: attention_fwd (sm80+), attention_fwd_sm90 (sm_90a) or "
                     "attention_decode (few query rows, split KV; --block-m = packed rows); "
                     "default: the daemon picks by shape and arch (attention_fwd when tile flags "
                     "are given); tune without it on sm_90a searches attention_fwd_sm90 and "
                     "attention_fwd together and serves the faster");
  command.add_option("--dtype", f.dtype, "element type of Q, K, V, O")
      ->required()
      ->check(CLI::IsMember({"fp16", "bf16"}));
  command.add_option("--head-dim", f.head_dim, "head dimension D (compile-time)")->required();
  command.add_flag("--causal", f.causal, "causal (top-left aligned) masking");
  command.add_option("--batch", f.batch, "batch size (run-time shape)")->capture_default_str();
  command.add_option("--heads", f.heads, "query heads (run-time shape)")->capture_default_str();
  command.add_option("--kv-heads", f.kv_heads, "K/V heads, must divide --heads; 0 = --heads")
      ->capture_default_str();
  command.add_option("--seq-q", f.seq_q, "query sequence length (run-time shape)")->required();
  command.add_option("--seq-k", f.seq_k, "key sequence length; 0 = --seq-q")
      ->capture_default_str();
  command.add_option("--layout", f.layout, "memory layout of Q, K, V, O")
      ->check(CLI::IsMember({"bshd", "bhsd"}))
      ->capture_default_str();
  command.add_option("--arch", f.arch, "target, e.g. sm_90a; empty = the daemon's default");
}

void add_tile_options(CLI::App& command, KernelFlags& f) {
  command.add_option("--block-m", f.block_m,
                     "query rows per thread block (give all four of --block-m, --block-n, "
                     "--warps, --stages, or none for the family's default config)")
      ->capture_default_str();
  command.add_option("--block-n", f.block_n, "key rows per inner-loop tile")->capture_default_str();
  command.add_option("--warps", f.warps,
                     "warps per thread block (Hopper family: 4 x (block_m / 64 + 1))")
      ->capture_default_str();
  command.add_option("--stages", f.stages, "K/V pipeline depth")->capture_default_str();
  command.add_flag("--pingpong", f.pingpong,
                   "Hopper family: the two consumer warpgroups take turns on the tensor cores");
  command.add_flag("--separate-o", f.separate_o, "Hopper family: O gets its own shared tile");
  command.add_flag("--persistent", f.persistent,
                   "Hopper family: persistent CTAs over min(tiles, multiprocessors)");
  command.add_option("--q-placement", f.q_placement,
                     "Q operand held in registers or re-read from shared memory; auto = the "
                     "family's rule")
      ->check(CLI::IsMember({"auto", "registers", "shared"}))
      ->capture_default_str();
  command.add_option("--smem-layout", f.smem_layout,
                     "shared-memory layout of the tiles; auto = swizzled where head_dim/8 is a "
                     "power of two, else padded")
      ->check(CLI::IsMember({"auto", "swizzled", "padded"}))
      ->capture_default_str();
}

v1::KernelRequest kernel_request(const KernelFlags& f, bool with_tile) {
  v1::KernelRequest request;
  request.set_template_id(f.template_id);
  auto* problem = request.mutable_problem();
  problem->set_dtype(f.dtype == "bf16" ? v1::DTYPE_BF16 : v1::DTYPE_FP16);
  problem->set_head_dim(f.head_dim);
  problem->set_causal(f.causal);
  problem->set_batch(f.batch);
  problem->set_heads(f.heads);
  problem->set_kv_heads(f.kv_heads);
  problem->set_seq_q(f.seq_q);
  problem->set_seq_k(f.seq_k);
  problem->set_layout(f.layout == "bhsd" ? v1::LAYOUT_BHSD : v1::LAYOUT_BSHD);
  const bool tile_given = f.block_m != 0 || f.block_n != 0 || f.warps != 0 || f.stages != 0 ||
                          f.q_placement != "auto" || f.smem_layout != "auto" || f.pingpong ||
                          f.separate_o || f.persistent;
  if (with_tile && tile_given) {
    // Tile flags are a family's fields: without --template they are the sm80 family's.
    if (f.template_id.empty()) request.set_template_id("attention_fwd");
    auto* config = request.mutable_config();
    config->set_block_m(f.block_m);
    config->set_block_n(f.block_n);
    config->set_warps(f.warps);
    config->set_stages(f.stages);
    config->set_q_placement(f.q_placement == "registers" ? v1::Q_PLACEMENT_REGISTERS
                            : f.q_placement == "shared"  ? v1::Q_PLACEMENT_SHARED
                                                         : v1::Q_PLACEMENT_UNSPECIFIED);
    config->set_smem_layout(f.smem_layout == "swizzled" ? v1::SMEM_LAYOUT_SWIZZLED
                            : f.smem_layout == "padded" ? v1::SMEM_LAYOUT_PADDED
                                                        : v1::SMEM_LAYOUT_UNSPECIFIED);
    config->set_pingpong(f.pingpong);
    config->set_separate_o(f.separate_o);
    config->set_persistent(f.persistent);
  }
  request.set_arch(f.arch);
  // The CLI prints and saves handles and launches none, so a multi-kernel
  // handle (the decode family) is nothing it could misuse.
  request.set_accepts_multi_kernel(true);
  return request;
}

}  // namespace flashcore::cli
