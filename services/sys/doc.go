// Package sys is the mesh process's own service: it tells what a mesh
// process runs and echoes requests back, so a user can check that the mesh
// answers, in either codec, before using a primitive.
//
// # Subjects
//
//	subject         request            reply
//	mesh.sys.info   {} (or empty)      InfoReply: node, version, services, NATS server
//	mesh.sys.echo   any body           the same bytes
//
// Both are endpoints of the micro service "sys" with queue group "sys": one
// of the running mesh processes answers.
package sys
