package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/watchcache/watchcache/etcdkv"
)

// Flag values that check their range when set, so that a bad value is
// refused with the name of the flag or variable that carried it. Their
// String methods work on the zero value, which flag.PrintDefaults makes.

// floatValue is a finite, non-negative number.
type floatValue struct{ p *float64 }

func (v floatValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatFloat(*v.p, 'g', -1, 64)
}

func (v floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	switch {
	case err != nil || math.IsNaN(f) || math.IsInf(f, 0):
		return errors.New("not a number")
	case f < 0:
		return errors.New("must not be negative")
	}
	*v.p = f
	return nil
}

// intValue is a non-negative integer.
type intValue struct{ p *int }

func (v intValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("not an integer")
	case n < 0:
		return errors.New("must not be negative")
	}
	*v.p = n
	return nil
}

// durationValue is a positive duration with a unit ("30s", "1m").
type durationValue struct{ p *time.Duration }

func (v durationValue) String() string {
	if v.p == nil {
		return "0s"
	}
	return v.p.String()
}

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("not a duration such as 30s or 1m")
	case d <= 0:
		return errors.New("must be positive")
	}
	*v.p = d
	return nil
}

// offDurationValue is a positive duration, or 0 for "off".
type offDurationValue struct{ p *time.Duration }

func (v offDurationValue) String() string { return durationValue(v).String() }

func (v offDurationValue) Set(s string) error {
	if d, err := time.ParseDuration(strings.TrimSpace(s)); err == nil && d == 0 {
		*v.p = 0
		return nil
	}
	if err := durationValue(v).Set(s); err != nil {
		return fmt.Errorf("%w, or 0 for never", err)
	}
	return nil
}

// levelValue is a log level: debug, info, warn or error.
type levelValue struct{ p *slog.Level }

func (v levelValue) String() string {
	if v.p == nil {
		return "" // not a level, so that PrintDefaults shows the default
	}
	return strings.ToLower(v.p.String())
}

func (v levelValue) Set(s string) error {
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	l, ok := levels[strings.ToLower(strings.TrimSpace(s))]
	if !ok {
		return errors.New("must be debug, info, warn or error")
	}
	*v.p = l
	return nil
}

// hostPortValue is a TCP address, host:port, with a numeric port.
type hostPortValue struct{ p *string }

func (v hostPortValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v hostPortValue) Set(s string) error {
	if err := checkHostPort(s); err != nil {
		return err
	}
	*v.p = s
	return nil
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("not host:port (%v)", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// listenAddrValue is the agent's listen address: host:port, or
// http://host:port or https://host:port as the commands that talk to the
// agent take it (WATCHCACHE_HTTP_ADDR serves both). scheme records the
// scheme given, "" for none.
type listenAddrValue struct {
	p      *string
	scheme *string
}

func (v listenAddrValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v listenAddrValue) Set(s string) error {
	u, err := parseAgentURL(s)
	if err != nil {
		return err
	}
	*v.p, *v.scheme = u.Host, ""
	if strings.Contains(s, "://") {
		*v.scheme = u.Scheme
	}
	return nil
}

// listValue is a comma-separated list, such as etcd endpoints; blanks
// around the commas are dropped.
type listValue struct{ p *[]string }

func (v listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v listValue) Set(s string) error {
	var items []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	if len(items) == 0 {
		return errors.New("empty list")
	}
	*v.p = items
	return nil
}

// accessCheckValue is etcdkv's AccessCheck by name: strict or bounded.
type accessCheckValue struct{ p *etcdkv.AccessCheck }

func (v accessCheckValue) String() string {
	if v.p != nil && *v.p == etcdkv.AccessCheckBounded {
		return "bounded"
	}
	return "strict"
}

func (v accessCheckValue) Set(s string) error {
	switch strings.TrimSpace(s) {
	case "strict":
		*v.p = etcdkv.AccessCheckStrict
	case "bounded":
		*v.p = etcdkv.AccessCheckBounded
	default:
		return errors.New("want strict or bounded")
	}
	return nil
}

// maxDurationValue is a positive duration of at most max.
type maxDurationValue struct {
	p   *time.Duration
	max time.Duration
}

func (v maxDurationValue) String() string { return durationValue{v.p}.String() }

func (v maxDurationValue) Set(s string) error {
	var d time.Duration
	if err := (durationValue{&d}).Set(s); err != nil {
		return err
	}
	if d > v.max {
		return fmt.Errorf("must be at most %v", v.max)
	}
	*v.p = d
	return nil
}

// consulAddrValue is the URL of a Consul-protocol server: http or https,
// a host and a port, nothing else.
type consulAddrValue struct{ p *string }

func (v consulAddrValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v consulAddrValue) Set(s string) error {
	u, err := url.Parse(s)
	switch {
	case s == "":
		*v.p = ""
		return nil
	case strings.ContainsAny(s, " \t"):
		return errors.New("contains a space")
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Host == "", u.Port() == "":
		return errors.New("want http://host:port or https://host:port")
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		return errors.New("want http://host:port or https://host:port, without a path, a query or credentials")
	}
	*v.p = strings.TrimSuffix(s, "/")
	return nil
}
