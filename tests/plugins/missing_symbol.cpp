// A shared object that is not a moeq plugin: it exports a function, but no entry point.
extern "C" int moeq_test_some_function() {
  return 42;
}
