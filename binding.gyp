{
  "target_defaults": {
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")"
    ],
    "defines": [
      "NAPI_VERSION=8",
      "NODE_ADDON_API_DISABLE_DEPRECATED",
      "NODE_ADDON_API_ENABLE_TYPE_CHECK_ON_AS",
      "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
    ],
    "dependencies": [
      "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
    ],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
    "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
    "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]
  },
  "targets": [
    {
      "target_name": "kvxfer",
      "sources": [
        "native/addon.cc",
        "native/agent/agent.cc",
        "native/agent/convert.cc",
        "native/agent/deliver.cc",
        "native/agent/plan_builder.cc",
        "native/agent/tables.cc",
        "native/crc32.cc",
        "native/cuda/cuda_api.cc",
        "native/cuda/cuda_helper.cc",
        "native/cuda/memory_check.cc",
        "native/descs.cc",
        "native/host_memory.cc",
        "native/identity.cc",
        "native/liveness.cc",
        "native/loop/busy_poll.cc",
        "native/process_copy.cc",
        "native/shared_pages.cc",
        "native/progress.cc",
        "native/nixl/nixl_api.cc",
        "native/nixl/nixl_engine.cc",
        "native/nixl/nixl_envelope.cc",
        "native/ucx/ucx_defaults.cc",
        "native/ucx/ucx_engine.cc",
        "native/ucx/ucx_metadata.cc",
        "native/ucx/ucx_info.cc"
      ],
      "include_dirs": [
        "native"
      ],
      "conditions": [
        ["OS=='linux'", {
          "cflags_cc+": ["<!@(pkg-config --cflags ucx 2>/dev/null || true)"],
          "libraries": [
            "<!@(pkg-config --libs ucx 2>/dev/null || echo '-lucp -luct -lucs')",
            "-ldl",
            "-lpthread"
          ]
        }]
      ]
    },
    {
      # The memcpy baseline of `kvxfer bench` (loaded with process.dlopen),
      # not part of the library. Its file, build/Release/kvxfer_bench.so,
      # must not end in .node: node-gyp-build and prebuildify take the first
      # .node file in build/Release, and gyp's make generator copies every
      # module there, product_dir or not.
      "target_name": "kvxfer_bench",
      "sources": [
        "bench/native/memcpy.cc"
      ],
      "target_conditions": [
        ["_type=='loadable_module'", { "product_extension": "so" }]
      ]
    }
  ]
}
