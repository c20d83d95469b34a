/* Load generator for bench/ebpf_capture.py: `count` write()s of `size` bytes on a
 * UDP socket connected to a loopback port, optionally paced at `rate` writes/s.
 * Prints the nanoseconds the writes took. Nothing leaves the loopback interface. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s PORT COUNT SIZE [RATE]\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]);
	long count = atol(argv[2]);
	int size = atoi(argv[3]);
	double rate = argc > 4 ? atof(argv[4]) : 0;
	char buf[4096];
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("socket/connect");
		return 1;
	}
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n", 36);
	if (size > (int)sizeof(buf))
		size = sizeof(buf);
	long long start = now_ns();
	for (long i = 0; i < count; i++) {
		if (write(fd, buf, size) < 0) {
			perror("write");
			return 1;
		}
		if (rate > 0 && (i & 255) == 255) {
			long long due = start + (long long)((i + 1) * 1e9 / rate);
			long long t = now_ns();
			if (due > t) {
				struct timespec d = {.tv_sec = (due - t) / 1000000000LL, .tv_nsec = (due - t) % 1000000000LL};
				nanosleep(&d, NULL);
			}
		}
	}
	printf("%lld\n", now_ns() - start);
	return 0;
}
