// Translation of the tuning calls: a TuneRequest into the service's
// TuneSettings (each rejection names the field), and tuning results and
// progress events into their messages.
#pragma once

#include <string_view>

#include "common/result.hpp"
#include "flashcore/v1/flashcore.pb.h"
#include "service/service.hpp"

namespace flashcore::rpc {

Result<TuneSettings> parse_tune_request(const v1::TuneRequest& request,
                                        std::string_view default_arch);

void fill_result(const TuneResult& result, v1::TuningResult* out);
void fill_best(const BestRecord& best, v1::TuningResult* out);
v1::TuneProgress to_progress(const TuneEvent& event);
// The tuning database's records of a job and of one of its trials.
void fill_job(const JobRecord& job, v1::TuningJobRecord* out);
void fill_trial(const TrialRecord& trial, const TuningScope& job_scope,
                v1::TuningTrialRecord* out);

v1::Layout layout_of(QkvLayout layout);
QkvLayout qkv_layout_of(v1::Layout layout);

}  // namespace flashcore::rpc
