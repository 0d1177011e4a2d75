// The kernels layer's public API: include this one header.
#pragma once

#include "moeq/kernels/block.h"
#include "moeq/kernels/fp4_quant.h"
#include "moeq/kernels/fp8_quant.h"
#include "moeq/kernels/int_quant.h"
#include "moeq/kernels/modelopt.h"
#include "moeq/kernels/pack.h"
#include "moeq/kernels/reduce.h"
#include "moeq/kernels/source_dequant.h"
