package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// errTooLarge is a PUT body over MaxValueSize, answered with 413 as
// Consul does.
var errTooLarge = fmt.Errorf("Request body too large, max size: %d bytes", MaxValueSize)

// statusOf maps an error to the HTTP status and message the client gets.
// Messages name the problem; 5xx ones carry the store's reason.
func statusOf(err error) (int, string) {
	var br *badRequest
	switch {
	case errors.As(err, &br):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, errMethod):
		return http.StatusMethodNotAllowed, "method not allowed"
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, err.Error()
	case errors.Is(err, watchcache.ErrInvalid):
		// The store refused the request itself (a key it cannot take):
		// the client's input, not the store's health.
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, kvstore.ErrPermissionDenied):
		return http.StatusForbidden, "Permission denied: " + err.Error()
	case errors.Is(err, kvstore.ErrAuthFailed), errors.Is(err, kvstore.ErrUnknownIdentity):
		return http.StatusForbidden, err.Error()
	case errors.Is(err, watchcache.ErrClosed), errors.Is(err, kvstore.ErrClosed):
		return http.StatusServiceUnavailable, "agent is shutting down"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, watchcache.ErrTimeout):
		return http.StatusGatewayTimeout, "the store did not answer in time: " + err.Error()
	}
	return http.StatusServiceUnavailable, "the store is unavailable: " + err.Error()
}

// writeError answers with err's status and message.
// The request's log line (reqlog.go) carries the error.
func (a *Agent) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := statusOf(err)
	failed(r, err)
	http.Error(w, msg, status)
}
