package lock

// BeforeRefusal makes s, not started yet, call f before it takes a
// refused request's key out of the line.
func BeforeRefusal(s *Server, f func(name string)) { s.beforeRefusal = f }

// BeforeExpired makes s, not started yet, call f before it emits an
// expired event.
func BeforeExpired(s *Server, f func()) { s.beforeExpired = f }
