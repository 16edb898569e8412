package lab_test

import (
	"encoding/json"
	"io"
	"net/http"
	"time"
)

func httpGetJSON(url string, out any) (string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(b), json.Unmarshal(b, out)
}
