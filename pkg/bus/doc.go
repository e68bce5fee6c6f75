// Package bus is the NATS toolbox every mesh service stands on: connecting,
// the wire codec, coded errors, request/reply services that speak the NATS
// micro protocol, typed requests, discovery and events.
//
// It is a toolbox the services call, never a framework that calls them: it
// holds no globals and no registries, and starts goroutines only on behalf
// of an object the caller owns and stops (a Service).
//
// # Wire conventions
//
// Codec: msgpack by default; JSON when a request carries
// Content-Type: application/json, or its body is not a msgpack map (or
// nil), which every msgpack request is: a body starting with '{', an empty
// one, and text a person typed by mistake, whose error a person can then
// read. The reply
// uses the request's codec. Struct fields are named by their json tags
// (snake_case) in both codecs. Instants travel as RFC 3339 strings with
// milliseconds (Time); durations as integer milliseconds in fields named
// *_ms.
//
// Requests are read strictly (Call.Decode, Typed): a field the type does
// not have is ErrUnknownField ("ttl: unknown field; did you mean ttl_ms?"),
// a wrong type ErrInvalid naming the field and the JSON type expected; a
// JSON body must be UTF-8 text; a msgpack body nests at most MaxDepth
// levels, checked before decoding, so decoding allocates at most a small
// multiple of the body's length. Replies are read leniently
// (Codec.Unmarshal): a newer service may add fields. See decode.go.
//
// Errors: an *Error has an HTTP-like Status, a stable Code and a Message. A
// reply error carries micro's Nats-Service-Error (message) and
// Nats-Service-Error-Code (status) headers and a {"code","message"} body in
// the request's codec. Request and ReplyError rebuild the *Error on the
// client, where errors.Is matches it against the service's sentinel (same
// Code) or a generic sentinel of this package (same Status).
//
// # Services
//
// A Service answers the micro protocol with nats.go/micro's own types, so
// `nats micro ls|info|stats` list it. It departs from nats.go/micro's
// dispatch: micro calls a handler serially per endpoint and counts only the
// errors a handler reported before returning; a Service runs handlers
// concurrently (bounded by Config.MaxConcurrent), recovers panics into a 500
// reply, and counts requests, errors and processing time per endpoint when
// the reply is sent.
//
// A handler gets a *Call, the request and its handle, which it answers
// exactly once (Reply, ReplyRaw, ReplyPooled), before it returns or later
// from any goroutine; Typed is the one-line form for a function of a typed
// request that returns its reply:
//
//	bus.Endpoint{Name: "get", Subject: "mesh.kv.get", Handler: bus.Typed(s.get)}
//
// Every hand-off between goroutines wakes a thread, which on a small VM
// costs more than a short handler's work. An Inline endpoint runs its
// handler in the subscription's callback; such a handler hands work that
// must wait to a worker (Call.Go), and answers from a callback when its
// reply comes from one, such as the acknowledgement of a JetStream write
// sent with Writes: the reply then leaves from that callback, with no
// worker at all.
//
// # Subjects
//
//	subject                               what
//	$SRV.PING|INFO|STATS                  every service instance (micro protocol)
//	$SRV.PING|INFO|STATS.<name>[.<id>]    the instances of one service, one instance
//	mesh.events.<service>.<what>          events (Events), kept by the stream MESH_EVENTS
package bus
