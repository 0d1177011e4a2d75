// moeq: quantizes Mixture-of-Experts models. Subcommands are in cmd_<name>.cpp (commands.h).
#include <CLI/CLI.hpp>

#include <execinfo.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <vector>

#include "commands.h"
#include "moeq/core/error.h"
#include "moeq/core/log.h"

namespace {

// A crash prints where it happened before the default action (core dump) runs: a user's report
// then names the function, and a crash on a machine without a debugger can still be located.
// Only async-signal-safe calls (write, backtrace_symbols_fd) run in the handler.
void report_fatal_signal(int signal) {
  constexpr char kHeader[] = "moeq: fatal signal; backtrace (innermost first):\n";
  [[maybe_unused]] auto written = ::write(STDERR_FILENO, kHeader, sizeof(kHeader) - 1);
  void* frames[64];
  ::backtrace_symbols_fd(frames, ::backtrace(frames, 64), STDERR_FILENO);
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

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
  // backtrace() loads libgcc on first use, which is not safe inside the handler: warm it here.
  void* warm[1];
  ::backtrace(warm, 1);
  for (int fatal : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) {
    std::signal(fatal, report_fatal_signal);
  }
  try {
    return run(argc, argv);
  } catch (const moeq::Error& e) {
    std::fprintf(stderr, "moeq: error: %s\n", e.message().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moeq: error: %s\n", e.what());
  }
  return 1;
}
