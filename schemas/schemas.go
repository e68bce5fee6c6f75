// Package schemas holds the JSON Schema (draft 2020-12) of every request
// and reply of the mesh, one file per type, named <service>.<endpoint>.request.json
// and <service>.<endpoint>.reply.json, plus error.json (the body of every
// error reply), event.json (the envelope of every event),
// event.<service>.<what>.json (the data of each event) and defs.json
// (shared definitions: instants, durations). examples/ holds example
// requests per endpoint; the package's test sends each of them to the real
// services, in JSON and in msgpack, and validates the requests and the
// replies against these schemas. See README.md for the table of subjects.
package schemas

import "embed"

// FS holds the schema files.
//
//go:embed *.json
var FS embed.FS
