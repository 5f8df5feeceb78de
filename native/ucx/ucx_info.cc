#include "ucx/ucx_info.h"

#include <ucp/api/ucp.h>
#include <uct/api/uct.h>

#include <algorithm>

namespace kvxfer {

std::string UcxVersion() { return ucp_get_version_string(); }

bool UcxThreads() {
  ucp_lib_attr_t attr{};
  attr.field_mask = UCP_LIB_ATTR_FIELD_MAX_THREAD_LEVEL;
  return ucp_lib_query(&attr) == UCS_OK && attr.max_thread_level == UCS_THREAD_MODE_MULTI;
}

void ForEachUcxMd(const std::function<void(uct_component_h component, const char* md_name, uct_md_h md)>& visit,
                  const std::function<bool(const char* md_name)>& want) {
  uct_component_h* components = nullptr;
  unsigned component_count = 0;
  if (uct_query_components(&components, &component_count) != UCS_OK) return;
  for (unsigned c = 0; c < component_count; ++c) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (uct_component_query(components[c], &attr) != UCS_OK) continue;
    for (const uct_md_resource_desc_t& md_desc : mds) {
      if (want && !want(md_desc.md_name)) continue;
      uct_md_config_t* config = nullptr;
      if (uct_md_config_read(components[c], nullptr, nullptr, &config) != UCS_OK) continue;
      uct_md_h md = nullptr;
      ucs_status_t st = uct_md_open(components[c], md_desc.md_name, config, &md);
      uct_config_release(config);
      if (st != UCS_OK) continue;
      visit(components[c], md_desc.md_name, md);
      uct_md_close(md);
    }
  }
  uct_release_component_list(components);
}

std::vector<UcxTransport> UcxTransports() {
  std::vector<UcxTransport> out;
  ForEachUcxMd([&](uct_component_h, const char*, uct_md_h md) {
    uct_tl_resource_desc_t* resources = nullptr;
    unsigned resource_count = 0;
    if (uct_md_query_tl_resources(md, &resources, &resource_count) != UCS_OK) return;
    for (unsigned i = 0; i < resource_count; ++i) out.push_back({resources[i].tl_name, resources[i].dev_name});
    uct_release_tl_resource_list(resources);
  });
  return out;
}

const UcxCudaSupport& QueryUcxCuda() {
  static const UcxCudaSupport support = [] {
    UcxCudaSupport out;
    ForEachUcxMd([&](uct_component_h, const char* md_name, uct_md_h md) {
      uct_md_attr_t attr{};
      if (uct_md_query(md, &attr) != UCS_OK) return;
      if ((attr.cap.reg_mem_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0) out.memory_domains.emplace_back(md_name);
      const bool moves_cuda = (attr.cap.access_mem_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0 ||
                              (attr.cap.reg_mem_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
      if (!moves_cuda) return;
      uct_tl_resource_desc_t* resources = nullptr;
      unsigned resource_count = 0;
      if (uct_md_query_tl_resources(md, &resources, &resource_count) != UCS_OK) return;
      for (unsigned i = 0; i < resource_count; ++i) {
        std::string name = resources[i].tl_name;
        if (std::find(out.transports.begin(), out.transports.end(), name) == out.transports.end()) {
          out.transports.push_back(std::move(name));
        }
      }
      uct_release_tl_resource_list(resources);
    });
    out.supported = !out.memory_domains.empty();
    if (!out.supported) {
      out.reason = "UCX " + UcxVersion() +
                   " has no memory domain that registers CUDA memory: it was built without CUDA (Debian's "
                   "libucx is), or CUDA's driver is missing. Use a UCX configured --with-cuda (README, GPU memory)";
    }
    return out;
  }();
  return support;
}

}  // namespace kvxfer
