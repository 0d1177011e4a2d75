// moeq: quantizes Mixture-of-Experts models. Subcommands are in cmd_<name>.cpp (commands.h).
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <exception>
#include <vector>

#include "commands.h"
#include "moeq/core/error.h"
#include "moeq/core/log.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"moeq: quantize Mixture-of-Experts language models", "moeq"};
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "print debug messages");

  // The subcommands, in the order `moeq --help` lists them.
  const std::vector<moeq::cli::Command> commands = {
      moeq::cli::add_quantize_command(app),         moeq::cli::add_eval_command(app),
      moeq::cli::add_config_reference_command(app), moeq::cli::add_inspect_command(app),
      moeq::cli::add_formats_command(app),          moeq::cli::add_plugins_command(app),
  };

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (verbose) {
    moeq::logger().set_level(moeq::LogLevel::kDebug);
  }
  for (const moeq::cli::Command& command : commands) {
    if (command.app->parsed()) {
      return command.run();
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A write past the file-size limit (a full quota) fails with EFBIG and becomes an error that
  // cleans up, instead of killing the process with partial output left behind.
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    return run(argc, argv);
  } catch (const moeq::Error& e) {
    std::fprintf(stderr, "moeq: error: %s\n", e.message().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moeq: error: %s\n", e.what());
  }
  return 1;
}
