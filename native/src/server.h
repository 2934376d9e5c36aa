// inference.GRPCInferenceService on gRPC C++, handing calls to Python in groups.
//
// gRPC's threads accept every call through one callback generic service (so one port
// serves every RPC, known or not), decode ModelInferRequest themselves and queue an event
// for Python. The queue wakes the event loop through an eventfd only when it goes from
// empty to non-empty, so one wake-up and one GIL acquisition take every call that arrived
// meanwhile. Python answers a group of calls with one `finish` call; the messages are
// serialised and the calls finished with the GIL released. No gRPC thread ever takes the GIL.
#pragma once

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "grpc_service.pb.h"

namespace conveyor {

// What Python receives, as the first element of each drained tuple.
enum class EventKind : int {
  kInfer = 0,          // a ModelInfer call decoded here (raw_input_contents only)
  kUnary = 1,          // any other unary call (or a ModelInfer that needs Python's decoder)
  kStreamOpen = 2,     // a ModelStreamInfer call began
  kStreamMessage = 3,  // one request message on an open stream
  kStreamEnd = 4,      // the client half-closed the stream
  kCancel = 5,         // the call was cancelled (client gone, deadline, shutdown)
};

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct Event {
  EventKind kind;
  uint64_t call_id;
  std::string method;   // kUnary: the full method path
  std::string payload;  // kUnary, kStreamMessage: the serialised request
  std::shared_ptr<const inference::ModelInferRequest> request;  // kInfer
  Metadata metadata;    // kInfer, kUnary, kStreamOpen: the configured keys present
};

class Core;

// One call, unary or streaming, from creation until gRPC reports it done. Python refers
// to it by id; `Core` keeps it alive while it is registered, and any holder of a
// shared_ptr (a `finish` in progress) keeps it alive until it lets go.
class Call : public grpc::ServerGenericBidiReactor {
 public:
  Call(Core* core, grpc::GenericCallbackServerContext* context, uint64_t id);
  void Begin();

  // Unary answers: exactly one of these finishes the call; later ones are ignored.
  void Respond(std::unique_ptr<grpc::ByteBuffer> response);
  void Fail(grpc::Status status);
  // Streaming answers: messages are written in order, then the stream is finished.
  void Write(std::unique_ptr<grpc::ByteBuffer> message);
  void Close(grpc::Status status);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void ReadUnary();
  void ReadInfer();
  bool TakeFinish();
  Metadata SelectedMetadata() const;

  Core* core_;
  grpc::GenericCallbackServerContext* context_;
  const uint64_t id_;
  const bool streaming_;
  const bool infer_;
  grpc::ByteBuffer incoming_;

  std::mutex mu_;
  bool finished_ = false;           // Finish (or StartWriteAndFinish) was called
  bool close_requested_ = false;    // streaming: finish once the writes are out
  bool writing_ = false;
  grpc::Status close_status_;
  std::deque<std::unique_ptr<grpc::ByteBuffer>> writes_;
  std::unique_ptr<grpc::ByteBuffer> response_;
};

// The state the calls and the Python-facing server share: the event queue and its
// eventfd, and the registry of live calls by id.
class Core : public grpc::CallbackGenericService {
 public:
  explicit Core(std::vector<std::string> metadata_keys);
  ~Core() override;

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override;

  void Post(Event event);
  std::vector<Event> Take();
  std::shared_ptr<Call> Find(uint64_t call_id);
  void Forget(uint64_t call_id);
  int fd() const { return event_fd_; }
  const std::vector<std::string>& metadata_keys() const { return metadata_keys_; }

 private:
  const std::vector<std::string> metadata_keys_;
  int event_fd_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex queue_mu_;
  std::vector<Event> queue_;
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
};

}  // namespace conveyor
