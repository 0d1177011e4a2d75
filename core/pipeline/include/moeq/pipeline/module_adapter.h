// ModuleAdapter: what a plugin registers for one MoE module type (a Hugging Face class name users
// know: "MixtralSparseMoeBlock", "GptOssExperts", "DeepseekV3MoE"). The pipeline looks each module
// of a decoder layer up by its type key and lets the adapter attach to it for that layer's
// calibration and quantization. Implementations live in adapters/ (one file per tier's adapter);
// the interface lives here because the pipeline calls it and dependencies point one way.
//
// ABI rules (docs/plugins.md): virtual destructor; new virtual functions only at the end; no
// default arguments on virtual functions; objects are created by the plugin's factory and handed
// to the host as unique_ptr, which Registry::create wraps so the library stays loaded.
#pragma once

#include <boost/config.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace moeq {

namespace runtime {
class Module;
}
namespace pipeline {
class LayerSession;
}

// How much of the pipeline an adapter owns (DESIGN.md, "Modules, adapters and the three tiers").
enum class Tier {
  kEasy = 0,  // sparse MoE block: a router and per-expert MLPs with separate projections
  kMid = 1,   // fused experts: 3-D parameters run through bmm/matmul, intercepted
  kHard = 2,  // pipeline stages: source dequantization, MLA, grouped routing, layers to skip
};

// "easy", "mid", "hard".
std::string_view to_string(Tier tier);

class BOOST_SYMBOL_VISIBLE ModuleAdapter {
 public:
  virtual ~ModuleAdapter();

  // The registry key this adapter handles, e.g. "MixtralSparseMoeBlock".
  virtual std::string type_key() const = 0;
  virtual Tier tier() const = 0;
  // One line for `moeq plugins` and `moeq inspect`.
  virtual std::string describe() const = 0;

  // Takes charge of `module` (module.type() == type_key(), weights resident) for one layer's
  // calibration: installs its calibration routing on the module and records its experts'
  // coverage in `session`. The attachment lasts until session.detach_all(); an adapter that
  // cannot handle the module's class throws moeq::Error naming the module. The default throws
  // "adapter ... cannot attach" so registry-only test adapters need not implement it.
  virtual void attach(runtime::Module& module, pipeline::LayerSession& session);
};

using ModuleAdapterFactory = std::function<std::unique_ptr<ModuleAdapter>()>;

}  // namespace moeq
