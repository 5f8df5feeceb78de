// The engine over UCP: one context and one worker per agent, RMA for data,
// tagged messages for notifications (ucx_control.h), peer error handling so a dead peer
// fails its transfers instead of hanging them.
#pragma once

#include <ucp/api/ucp.h>

#include <string>

#include "status.h"

namespace kvxfer {

// "UCS_ERR_CONNECTION_RESET" for -25, and so on.
std::string UcsStatusName(ucs_status_t status);
Status UcsError(Code code, const std::string& what, ucs_status_t status);

// Called when the addon loads, on a JS thread, before any agent exists.
void PrepareUcxEnvironment();

}  // namespace kvxfer
