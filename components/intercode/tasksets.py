"""Task records (query + gold) for the SQL and Bash environments, written for this project.

SQL: 64 tasks over the four databases of databases.py, 16 each, labelled with Spider's hardness
levels (easy: one table, no grouping; medium: grouping/ordering or one join; hard: nested queries,
HAVING, anti-joins; extra: several joins with grouping, subqueries or limits).
Bash: 46 NL2Bash-style tasks over the three fixtures of filesystems.py, labelled easy (one command),
medium (a pipeline or one change) and hard (several steps or a computed change).
Where a task asks for an order, the query says so, ties included, since the SQL reward scores order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class Task:
    id: str
    query: str  # the natural-language instruction the agent sees
    gold: str  # the reference solution: a SQL query, or a bash command line
    hardness: str
    db: Optional[str] = None  # SQL: which database
    fixture: Optional[str] = None  # Bash: which file system

    def as_dict(self) -> dict:
        return asdict(self)


def _sql(db: str, rows: list[tuple[str, str, str]]) -> list[Task]:
    return [Task(f"sql-{db}-{i:02d}", q, g, h, db=db) for i, (h, q, g) in enumerate(rows)]


SQL_TASKS: list[Task] = [
    *_sql(
        "school",
        [
            ("easy", "How many students are there?", "SELECT COUNT(*) FROM students"),
            ("easy", "List the names of all departments.", "SELECT name FROM departments"),
            (
                "easy",
                "What are the titles of the courses worth 4 credits?",
                "SELECT title FROM courses WHERE credits = 4",
            ),
            (
                "easy",
                "Show the names and GPAs of fourth-year students.",
                "SELECT name, gpa FROM students WHERE year = 4",
            ),
            (
                "medium",
                "How many students are in each year? Show the year and the count, ordered by year.",
                "SELECT year, COUNT(*) FROM students GROUP BY year ORDER BY year",
            ),
            (
                "medium",
                "List the names of the instructors of the Computer Science department.",
                "SELECT i.name FROM instructors i JOIN departments d ON i.dept_id = d.dept_id WHERE d.name = 'Computer Science'",
            ),
            (
                "medium",
                "What is the average instructor salary in each department? Show the department name and the average.",
                "SELECT d.name, AVG(i.salary) FROM instructors i JOIN departments d ON i.dept_id = d.dept_id GROUP BY d.name",
            ),
            (
                "medium",
                "Show the names of the 5 students with the highest GPA, highest first.",
                "SELECT name FROM students ORDER BY gpa DESC, name LIMIT 5",
            ),
            (
                "hard",
                "Which students have a GPA above the average GPA of all students? Show their names.",
                "SELECT name FROM students WHERE gpa > (SELECT AVG(gpa) FROM students)",
            ),
            (
                "hard",
                "Which departments have more than 8 students? Show the department names.",
                "SELECT d.name FROM departments d JOIN students s ON s.dept_id = d.dept_id GROUP BY d.dept_id HAVING COUNT(*) > 8",
            ),
            (
                "hard",
                "How many distinct students received at least one A grade?",
                "SELECT COUNT(DISTINCT student_id) FROM enrollments WHERE grade = 'A'",
            ),
            (
                "hard",
                "For each course, show its title and the number of enrollments, ordered by that number "
                "descending and then by title.",
                "SELECT c.title, COUNT(*) FROM courses c JOIN enrollments e ON c.course_id = e.course_id "
                "GROUP BY c.course_id ORDER BY COUNT(*) DESC, c.title",
            ),
            (
                "extra",
                "Show the names of the students enrolled in at least one course of the Mathematics department, "
                "without duplicates.",
                "SELECT DISTINCT s.name FROM students s JOIN enrollments e ON s.student_id = e.student_id "
                "JOIN courses c ON e.course_id = c.course_id JOIN departments d ON c.dept_id = d.dept_id "
                "WHERE d.name = 'Mathematics'",
            ),
            (
                "extra",
                "Which instructors earn more than every instructor of the Physics department? Show their names.",
                "SELECT name FROM instructors WHERE salary > (SELECT MAX(i.salary) FROM instructors i "
                "JOIN departments d ON i.dept_id = d.dept_id WHERE d.name = 'Physics')",
            ),
            (
                "extra",
                "For each department offering at least 2 courses, show its name, its number of courses and their "
                "total credits.",
                "SELECT d.name, COUNT(*), SUM(c.credits) FROM departments d JOIN courses c ON c.dept_id = d.dept_id "
                "GROUP BY d.dept_id HAVING COUNT(*) >= 2",
            ),
            (
                "extra",
                "Show the names of the students who received both an A and a D grade.",
                "SELECT name FROM students WHERE student_id IN (SELECT student_id FROM enrollments WHERE grade = 'A') "
                "AND student_id IN (SELECT student_id FROM enrollments WHERE grade = 'D')",
            ),
        ],
    ),
    *_sql(
        "store",
        [
            ("easy", "How many products are there?", "SELECT COUNT(*) FROM products"),
            (
                "easy",
                "List the names of the customers from Germany.",
                "SELECT name FROM customers WHERE country = 'Germany'",
            ),
            ("easy", "What is the price of the most expensive product?", "SELECT MAX(price) FROM products"),
            (
                "easy",
                "Show the names and prices of the products in the furniture category.",
                "SELECT name, price FROM products WHERE category = 'furniture'",
            ),
            (
                "medium",
                "How many orders have each status? Show the status and the count.",
                "SELECT status, COUNT(*) FROM orders GROUP BY status",
            ),
            (
                "medium",
                "List all products from cheapest to most expensive, showing name and price.",
                "SELECT name, price FROM products ORDER BY price",
            ),
            (
                "medium",
                "Show the number of customers in each country, ordered by that number descending and then by country.",
                "SELECT country, COUNT(*) FROM customers GROUP BY country ORDER BY COUNT(*) DESC, country",
            ),
            (
                "medium",
                "What is the average product price in each category? Show the category and the average.",
                "SELECT category, AVG(price) FROM products GROUP BY category",
            ),
            (
                "hard",
                "Which customers have never placed an order? Show their names.",
                "SELECT name FROM customers WHERE customer_id NOT IN (SELECT customer_id FROM orders)",
            ),
            (
                "hard",
                "Which products have never been ordered? Show their names.",
                "SELECT name FROM products WHERE product_id NOT IN (SELECT product_id FROM order_items)",
            ),
            (
                "hard",
                "Show the names of the customers who placed more than 3 orders.",
                "SELECT c.name FROM customers c JOIN orders o ON c.customer_id = o.customer_id GROUP BY c.customer_id "
                "HAVING COUNT(*) > 3",
            ),
            (
                "hard",
                "What is the total quantity sold in each product category? Show the category and the total, "
                "largest first.",
                "SELECT p.category, SUM(oi.quantity) FROM order_items oi JOIN products p ON oi.product_id = p.product_id "
                "GROUP BY p.category ORDER BY SUM(oi.quantity) DESC",
            ),
            (
                "extra",
                "Which customer spent the most on shipped orders (sum of price times quantity)? Show the name and "
                "the amount.",
                "SELECT c.name, SUM(p.price * oi.quantity) AS total FROM customers c JOIN orders o ON c.customer_id = o.customer_id "
                "JOIN order_items oi ON o.order_id = oi.order_id JOIN products p ON oi.product_id = p.product_id "
                "WHERE o.status = 'shipped' GROUP BY c.customer_id ORDER BY total DESC LIMIT 1",
            ),
            (
                "extra",
                "For each city, show how many distinct customers placed at least one cancelled order.",
                "SELECT c.city, COUNT(DISTINCT c.customer_id) FROM customers c JOIN orders o ON c.customer_id = o.customer_id "
                "WHERE o.status = 'cancelled' GROUP BY c.city",
            ),
            (
                "extra",
                "List the names of the products ordered by customers from France, without duplicates, sorted by name.",
                "SELECT DISTINCT p.name FROM products p JOIN order_items oi ON p.product_id = oi.product_id "
                "JOIN orders o ON oi.order_id = o.order_id JOIN customers c ON o.customer_id = c.customer_id "
                "WHERE c.country = 'France' ORDER BY p.name",
            ),
            (
                "extra",
                "How many orders contain more than 2 distinct products?",
                "SELECT COUNT(*) FROM (SELECT order_id FROM order_items GROUP BY order_id HAVING COUNT(DISTINCT product_id) > 2)",
            ),
        ],
    ),
    *_sql(
        "flights",
        [
            ("easy", "How many flights are there?", "SELECT COUNT(*) FROM flights"),
            ("easy", "List the codes of the airports in the USA.", "SELECT code FROM airports WHERE country = 'USA'"),
            ("easy", "What are the names of all airlines?", "SELECT name FROM airlines"),
            (
                "easy",
                "Show the ids of the flights with a distance over 8000.",
                "SELECT flight_id FROM flights WHERE distance > 8000",
            ),
            (
                "medium",
                "How many flights does each airline operate? Show the airline name and the count.",
                "SELECT a.name, COUNT(*) FROM airlines a JOIN flights f ON a.airline_id = f.airline_id GROUP BY a.airline_id",
            ),
            (
                "medium",
                "What is the average flight duration in minutes from each origin airport code? Order by origin code.",
                "SELECT origin, AVG(duration_min) FROM flights GROUP BY origin ORDER BY origin",
            ),
            (
                "medium",
                "Show the 3 cheapest flights: flight id and price, cheapest first.",
                "SELECT flight_id, price FROM flights ORDER BY price LIMIT 3",
            ),
            (
                "medium",
                "List the origin airport codes of the flights going to NRT, without duplicates.",
                "SELECT DISTINCT origin FROM flights WHERE destination = 'NRT'",
            ),
            (
                "hard",
                "Which airports have neither departing nor arriving flights? Show their names.",
                "SELECT name FROM airports WHERE code NOT IN (SELECT origin FROM flights) "
                "AND code NOT IN (SELECT destination FROM flights)",
            ),
            (
                "hard",
                "Which airlines operate no flights? Show their names.",
                "SELECT name FROM airlines WHERE airline_id NOT IN (SELECT airline_id FROM flights)",
            ),
            (
                "hard",
                "Show the names of the airlines whose average flight price is above the average price of all flights.",
                "SELECT a.name FROM airlines a JOIN flights f ON a.airline_id = f.airline_id GROUP BY a.airline_id "
                "HAVING AVG(f.price) > (SELECT AVG(price) FROM flights)",
            ),
            (
                "hard",
                "What is the longest flight by distance departing from an airport in France? Show its id and distance.",
                "SELECT f.flight_id, f.distance FROM flights f JOIN airports ap ON f.origin = ap.code "
                "WHERE ap.country = 'France' ORDER BY f.distance DESC LIMIT 1",
            ),
            (
                "extra",
                "For every Lufthansa flight, show the flight id, the origin city and the destination city, ordered by "
                "flight id.",
                "SELECT f.flight_id, o.city, d.city FROM flights f JOIN airports o ON f.origin = o.code "
                "JOIN airports d ON f.destination = d.code JOIN airlines a ON f.airline_id = a.airline_id "
                "WHERE a.name = 'Lufthansa' ORDER BY f.flight_id",
            ),
            (
                "extra",
                "How many flights connect two airports located in the same country?",
                "SELECT COUNT(*) FROM flights f JOIN airports o ON f.origin = o.code JOIN airports d ON f.destination = d.code "
                "WHERE o.country = d.country",
            ),
            (
                "extra",
                "For each country with at least 5 departing flights, show the country and its number of departures, "
                "most first and then by country.",
                "SELECT ap.country, COUNT(*) FROM flights f JOIN airports ap ON f.origin = ap.code GROUP BY ap.country "
                "HAVING COUNT(*) >= 5 ORDER BY COUNT(*) DESC, ap.country",
            ),
            (
                "extra",
                "Which airline has the largest total flown distance? Show its name and the total distance.",
                "SELECT a.name, SUM(f.distance) FROM airlines a JOIN flights f ON a.airline_id = f.airline_id "
                "GROUP BY a.airline_id ORDER BY SUM(f.distance) DESC LIMIT 1",
            ),
        ],
    ),
    *_sql(
        "library",
        [
            ("easy", "How many books does the library have?", "SELECT COUNT(*) FROM books"),
            ("easy", "List the titles of the poetry books.", "SELECT title FROM books WHERE genre = 'poetry'"),
            (
                "easy",
                "What are the names of the British authors?",
                "SELECT name FROM authors WHERE nationality = 'British'",
            ),
            (
                "easy",
                "Show the titles of the books with more than 800 pages.",
                "SELECT title FROM books WHERE pages > 800",
            ),
            (
                "medium",
                "How many books are there in each genre? Show the genre and the count, ordered by genre.",
                "SELECT genre, COUNT(*) FROM books GROUP BY genre ORDER BY genre",
            ),
            (
                "medium",
                "Show the titles of the books written by Ivan Sutherland.",
                "SELECT b.title FROM books b JOIN authors a ON b.author_id = a.author_id WHERE a.name = 'Ivan Sutherland'",
            ),
            ("medium", "How many loans have not been returned yet?", "SELECT COUNT(*) FROM loans WHERE returned = 0"),
            (
                "medium",
                "List the 5 oldest books with their title and year, oldest first and then by title.",
                "SELECT title, year FROM books ORDER BY year, title LIMIT 5",
            ),
            (
                "hard",
                "Which members have never borrowed a book? Show their names.",
                "SELECT name FROM members WHERE member_id NOT IN (SELECT member_id FROM loans)",
            ),
            (
                "hard",
                "Which authors have not written any book in the library? Show their names.",
                "SELECT name FROM authors WHERE author_id NOT IN (SELECT author_id FROM books)",
            ),
            (
                "hard",
                "Show the names of the members with more than 5 loans.",
                "SELECT m.name FROM members m JOIN loans l ON m.member_id = l.member_id GROUP BY m.member_id HAVING COUNT(*) > 5",
            ),
            (
                "hard",
                "What is the average number of pages of the books of each author nationality? Show the nationality "
                "and the average.",
                "SELECT a.nationality, AVG(b.pages) FROM books b JOIN authors a ON b.author_id = a.author_id "
                "GROUP BY a.nationality",
            ),
            (
                "extra",
                "Show the titles of the books currently on loan (not returned) to members who joined before 2018, "
                "without duplicates.",
                "SELECT DISTINCT b.title FROM books b JOIN loans l ON b.book_id = l.book_id JOIN members m "
                "ON l.member_id = m.member_id WHERE l.returned = 0 AND m.joined_year < 2018",
            ),
            (
                "extra",
                "Which genre has been borrowed the most? Show the genre and its number of loans.",
                "SELECT b.genre, COUNT(*) FROM loans l JOIN books b ON l.book_id = b.book_id GROUP BY b.genre "
                "ORDER BY COUNT(*) DESC LIMIT 1",
            ),
            (
                "extra",
                "For each author with at least 5 books, show the name and the number of books, most books first and "
                "then by name.",
                "SELECT a.name, COUNT(*) FROM authors a JOIN books b ON a.author_id = b.author_id GROUP BY a.author_id "
                "HAVING COUNT(*) >= 5 ORDER BY COUNT(*) DESC, a.name",
            ),
            (
                "extra",
                "Show the names of the authors whose books were borrowed by the member named 'Lovelace M0', "
                "without duplicates.",
                "SELECT DISTINCT a.name FROM authors a JOIN books b ON a.author_id = b.author_id JOIN loans l "
                "ON b.book_id = l.book_id JOIN members m ON l.member_id = m.member_id WHERE m.name = 'Lovelace M0'",
            ),
        ],
    ),
]


def _bash(fixture: str, rows: list[tuple[str, str, str]]) -> list[Task]:
    return [Task(f"bash-{fixture}-{i:02d}", q, g, h, fixture=fixture) for i, (h, q, g) in enumerate(rows)]


BASH_TASKS: list[Task] = [
    *_bash(
        "fs_project",
        [
            ("easy", "Count the Python files under /testbed/src.", "find /testbed/src -name '*.py' | wc -l"),
            ("easy", "Print the names of the files in /testbed/docs in alphabetical order.", "ls /testbed/docs | sort"),
            ("easy", "Show the first 3 lines of /testbed/data/users.csv.", "head -n 3 /testbed/data/users.csv"),
            ("easy", "Print the lines of /testbed/notes/todo.txt in reverse order.", "tac /testbed/notes/todo.txt"),
            (
                "medium",
                "Count the lines containing ERROR in /testbed/logs/build.log.",
                "grep -c ERROR /testbed/logs/build.log",
            ),
            (
                "medium",
                "How many tests FAILED according to /testbed/logs/test.log?",
                "grep -c FAILED /testbed/logs/test.log",
            ),
            (
                "medium",
                "Print every line containing TODO in the Python files under /testbed/src, with file name and line number.",
                "grep -rn TODO /testbed/src --include='*.py'",
            ),
            (
                "medium",
                "Print the sum of the amount column (the third) of /testbed/data/sales.csv, skipping the header.",
                "awk -F, 'NR > 1 {s += $3} END {print s}' /testbed/data/sales.csv",
            ),
            (
                "medium",
                "For each city in /testbed/data/users.csv (fourth column), print how many users live there, as "
                "'count city' lines sorted by city.",
                "tail -n +2 /testbed/data/users.csv | cut -d, -f4 | sort | uniq -c",
            ),
            ("medium", "Print the line counts of the Python files in /testbed/tests.", "wc -l /testbed/tests/*.py"),
            (
                "medium",
                "List the executable shell scripts in /testbed/scripts.",
                "find /testbed/scripts -type f -perm -u+x -name '*.sh'",
            ),
            ("easy", "Create an empty file named CHANGELOG.md in /testbed.", "touch /testbed/CHANGELOG.md"),
            ("easy", "Make /testbed/scripts/deploy.sh executable.", "chmod +x /testbed/scripts/deploy.sh"),
            (
                "medium",
                "Delete the directory /testbed/src/app/legacy with everything in it.",
                "rm -r /testbed/src/app/legacy",
            ),
            (
                "medium",
                "Create the directory /testbed/build and copy every file of /testbed/docs into it.",
                "mkdir /testbed/build && cp /testbed/docs/* /testbed/build/",
            ),
            (
                "hard",
                "Change the version 1.4.2 to 1.5.0 in both /testbed/setup.cfg and /testbed/src/app/__init__.py.",
                "sed -i 's/1\\.4\\.2/1.5.0/' /testbed/setup.cfg /testbed/src/app/__init__.py",
            ),
            (
                "hard",
                "Write the names of the users older than 40 in /testbed/data/users.csv (age is the third column) "
                "into /testbed/data/older.txt, one per line, in file order.",
                "awk -F, 'NR > 1 && $3 > 40 {print $2}' /testbed/data/users.csv > /testbed/data/older.txt",
            ),
            (
                "hard",
                "Print the path of the largest file under /testbed/data.",
                "find /testbed/data -type f -printf '%s %p\\n' | sort -n | tail -n 1 | cut -d' ' -f2",
            ),
            (
                "hard",
                "Append the line 'run tests' to /testbed/notes/todo.txt, then print how many lines the file has.",
                "echo 'run tests' >> /testbed/notes/todo.txt && wc -l < /testbed/notes/todo.txt",
            ),
        ],
    ),
    *_bash(
        "fs_home",
        [
            (
                "easy",
                "How many files are directly in /testbed/photos (not in its subfolders)?",
                "find /testbed/photos -maxdepth 1 -type f | wc -l",
            ),
            ("easy", "Count the words in /testbed/documents/letter.txt.", "wc -w < /testbed/documents/letter.txt"),
            ("easy", "List the hidden files directly in /testbed.", "find /testbed -maxdepth 1 -type f -name '.*'"),
            ("easy", "Create the directory /testbed/projects/2024.", "mkdir -p /testbed/projects/2024"),
            (
                "medium",
                "Print the paths of the files under /testbed/documents that contain the word 'revenue'.",
                "grep -rl revenue /testbed/documents",
            ),
            (
                "medium",
                "Print the lines of /testbed/documents/notes.md that mention 'call'.",
                "grep call /testbed/documents/notes.md",
            ),
            (
                "medium",
                "Print the total size in bytes of all files under /testbed/photos, subfolders included.",
                "find /testbed/photos -type f -printf '%s\\n' | awk '{s += $1} END {print s}'",
            ),
            (
                "medium",
                "Move all .txt files from /testbed/downloads into /testbed/documents.",
                "mv /testbed/downloads/*.txt /testbed/documents/",
            ),
            ("medium", "Delete /testbed/documents/drafts/draft2.txt.", "rm /testbed/documents/drafts/draft2.txt"),
            (
                "hard",
                "Print the paths of the .jpg files in /testbed/photos whose content is duplicated by another .jpg file.",
                "md5sum /testbed/photos/*.jpg | sort | uniq -D -w32 | awk '{print $2}'",
            ),
            (
                "hard",
                "Copy every .jpg file of /testbed/photos into /testbed/backup, keeping the names.",
                "cp /testbed/photos/*.jpg /testbed/backup/",
            ),
            (
                "hard",
                "Rename every .jpg file in /testbed/photos to the .jpeg extension.",
                'for f in /testbed/photos/*.jpg; do mv "$f" "${f%.jpg}.jpeg"; done',
            ),
            (
                "hard",
                "Among the .txt files in /testbed/documents and /testbed/downloads, print the paths of those with "
                "identical content.",
                "md5sum /testbed/documents/*.txt /testbed/downloads/*.txt | sort | uniq -D -w32 | awk '{print $2}'",
            ),
        ],
    ),
    *_bash(
        "fs_server",
        [
            ("easy", "How many lines does /testbed/var/log/app.log have?", "wc -l < /testbed/var/log/app.log"),
            (
                "easy",
                "Print the value of the port setting in /testbed/etc/app.conf.",
                "grep '^port=' /testbed/etc/app.conf | cut -d= -f2",
            ),
            ("easy", "Print the last 5 lines of /testbed/var/log/app.log.", "tail -n 5 /testbed/var/log/app.log"),
            ("easy", "Delete all .tmp files in /testbed/tmp.", "rm /testbed/tmp/*.tmp"),
            (
                "medium",
                "Count the ERROR entries of each user in /testbed/var/log/app.log (user is the third field), as "
                "'count user' lines sorted by user.",
                "grep ' ERROR ' /testbed/var/log/app.log | awk '{print $3}' | sort | uniq -c",
            ),
            (
                "medium",
                "Print the distinct IP addresses in /testbed/var/log/access.log, sorted.",
                "cut -d' ' -f1 /testbed/var/log/access.log | sort -u",
            ),
            (
                "medium",
                "How many requests in /testbed/var/log/access.log got the status code 404?",
                "awk '$8 == 404' /testbed/var/log/access.log | wc -l",
            ),
            (
                "medium",
                "Print the paths of the HTML files under /testbed/srv/www.",
                "find /testbed/srv/www -name '*.html'",
            ),
            (
                "medium",
                "Change workers=4 to workers=8 in /testbed/etc/app.conf.",
                "sed -i 's/^workers=4$/workers=8/' /testbed/etc/app.conf",
            ),
            (
                "medium",
                "Print the size in bytes and the name of each file in /testbed/tmp, as 'size name' lines sorted by name.",
                "find /testbed/tmp -type f -printf '%s %f\\n' | sort -k2",
            ),
            (
                "hard",
                "Which IP address made the most requests in /testbed/var/log/access.log? Print only the address.",
                "cut -d' ' -f1 /testbed/var/log/access.log | sort | uniq -c | sort -rn | head -n 1 | awk '{print $2}'",
            ),
            (
                "hard",
                "Save the ERROR lines of /testbed/var/log/app.log into /testbed/var/log/errors.log.",
                "grep ' ERROR ' /testbed/var/log/app.log > /testbed/var/log/errors.log",
            ),
            (
                "hard",
                "Print the names of the products in /testbed/srv/data/inventory.csv with a stock (third column) below 15.",
                "awk -F, 'NR > 1 && $3 < 15 {print $2}' /testbed/srv/data/inventory.csv",
            ),
            (
                "hard",
                "Create /testbed/srv/www/sitemap.txt listing the HTML files under /testbed/srv/www as paths relative to "
                "that folder (like ./about.html), sorted.",
                "cd /testbed/srv/www && find . -name '*.html' | sort > sitemap.txt",
            ),
        ],
    ),
]

TASK_SETS: dict[str, list[Task]] = {"sql": SQL_TASKS, "bash": BASH_TASKS}


def select_tasks(
    tasks: list[Task], limit: int | None = None, task_ids: list[str] | None = None, seed: int = 0
) -> list[int]:
    """Indices of the tasks to run: the named ids, else `limit` tasks spread evenly over the hardness
    levels (round-robin, seeded order within a level), else all."""
    import random

    if task_ids:
        index = {t.id: i for i, t in enumerate(tasks)}
        unknown = [t for t in task_ids if t not in index]
        if unknown:
            raise KeyError(f"unknown task ids {unknown}; ids look like {tasks[0].id!r}")
        return [index[t] for t in task_ids]
    if limit is None or limit >= len(tasks):
        return list(range(len(tasks)))
    if limit < 1:
        raise ValueError(f"tasks_per_env must be at least 1, got {limit}")
    levels: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        levels.setdefault(t.hardness, []).append(i)
    rng = random.Random(seed)
    for members in levels.values():
        rng.shuffle(members)
    order = [levels[h] for h in sorted(levels)]
    chosen: list[int] = []
    while len(chosen) < limit:
        for members in order:
            if members and len(chosen) < limit:
                chosen.append(members.pop(0))
    return sorted(chosen)
