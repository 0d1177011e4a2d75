// The moeq CLI's subcommands. Each one lives in cmd_<name>.cpp and has one function here that adds
// it to the app and returns what runs it once the command line is parsed. main.cpp lists them.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>

namespace moeq::cli {

// A subcommand added to the app, and what runs it once the command line is parsed: it returns the
// process exit status and reports errors by throwing moeq::Error.
struct Command {
  CLI::App* app;
  std::function<int()> run;
};

// moeq plugins [--config FILE] [--plugin SPEC]... : what loaded and what each registered.
Command add_plugins_command(CLI::App& app);

// moeq formats [--experts N] [--rows R] [--cols C] [--scheme S]... : quantizes a generated expert
// stack with every named scheme and prints the error and size table.
Command add_formats_command(CLI::App& app);

// moeq inspect MODEL_DIR [--config FILE] [--json]: architecture, adapters and tiers, unclaimed
// tensors.
Command add_inspect_command(CLI::App& app);

// moeq quantize [--config FILE] [--model DIR] [--scheme S] [--output DIR] ... : the pipeline.
Command add_quantize_command(CLI::App& app);

// moeq eval --model DIR (--quantized DIR | --scheme S) --eval FILE ... : KL divergence and the
// other comparisons of a quantized model with its original.
Command add_eval_command(CLI::App& app);

// moeq config-reference: every recipe key (docs/configuration.md is its output).
Command add_config_reference_command(CLI::App& app);

// The most host memory this process has held resident (bytes), for reports.
int64_t peak_host_bytes();

}  // namespace moeq::cli
